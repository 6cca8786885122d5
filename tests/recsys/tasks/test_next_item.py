"""NextItemTask on a small honestly generated build directory (written here with the schema of
recsys/data/schema.py): batch layout, negatives, determinism and the two evaluation protocols
against a per-user reference computed with plain Python."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recsys.data import layout, schema
from recsys.losses import LossConfig, next_item_loss
from recsys.tasks.base import TrainTask
from recsys.tasks.next_item import NextItemTask
from tests.builds import write_tables


def write_build(directory: Path, sequences: list[list[int]], num_items: int, seed: int = 0,
                raw_item_ids: np.ndarray | None = None, raw_user_ids: np.ndarray | None = None) -> Path:
    """A one-part build directory: sequences (dense ids), eval_negatives (100 uniform items
    the user never interacted with, with replacement, as the SASRec protocol), vocab/."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    users = np.arange(1, len(sequences) + 1, dtype=np.int64)
    seq_table = pa.table({
        schema.USER: pa.array(users),
        schema.SEQ_ITEMS: pa.array([list(map(int, s)) for s in sequences], type=pa.list_(pa.int64())),
        schema.SEQ_TIMES: pa.array([list(range(len(s))) for s in sequences], type=pa.list_(pa.int64())),
    })
    negs = []
    for s in sequences:
        allowed = np.setdiff1d(np.arange(1, num_items + 1), np.asarray(s))
        negs.append(rng.choice(allowed, schema.NUM_EVAL_NEGATIVES, replace=True).tolist())
    write_tables(directory, {layout.SEQUENCES: seq_table, layout.EVAL_NEGATIVES: pa.table(
        {schema.USER: pa.array(users), schema.NEGATIVES: pa.array(negs, type=pa.list_(pa.int64()))})})
    vocab = directory / schema.VOCAB_DIR
    vocab.mkdir(exist_ok=True)
    raw_items = np.arange(1001, 1001 + num_items) if raw_item_ids is None else raw_item_ids
    raw_users = users + 500 if raw_user_ids is None else raw_user_ids
    for name, raw in ((schema.ITEMS_VOCAB, raw_items), (schema.USERS_VOCAB, raw_users)):
        pq.write_table(pa.table({"raw_id": pa.array(np.asarray(raw, dtype=np.int64)),
                                 "id": pa.array(np.arange(1, len(raw) + 1, dtype=np.int64))},
                                schema=schema.VOCAB_SCHEMA), vocab / name)
    return directory


def markov_sequences(num_users: int = 80, num_items: int = 40, seed: int = 0) -> list[list[int]]:
    """Users walk a fixed item->item chain (next = perm[prev]) with 20% random jumps, so a
    first-order model can learn it and a popularity model cannot."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_items) + 1
    out = []
    for u in range(num_users):
        length = int(rng.integers(3, 16))
        s = [int(rng.integers(1, num_items + 1))]
        while len(s) < length:
            s.append(int(perm[s[-1] - 1]) if rng.random() < 0.8 else int(rng.integers(1, num_items + 1)))
        out.append(s)
    out += [[3, 4], [5]]  # a short user (trains, not evaluated) and a single-item user (neither)
    return out


class Markov(nn.Module):
    """Tiny first-order next-item model: hidden_t = W · E[items_t] (test stand-in for SASRec)."""

    def __init__(self, num_items: int, d: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(num_items + 1, d, padding_idx=0)
        self.proj = nn.Linear(d, d)
        self.drop = nn.Dropout(0.1)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.proj(self.drop(self.emb(items)))  # [B,n,d]

    def item_embeddings(self) -> torch.Tensor:
        return self.emb.weight

    def user_embedding(self, items: torch.Tensor) -> torch.Tensor:
        return self(items)[:, -1]

    def training_loss(self, batch, loss_cfg):
        return next_item_loss(self(batch["items"]), self.emb.weight, batch, loss_cfg), {}


class FixedScores(nn.Module):
    """score(user, item) = w[item] (1-d embeddings), for reference checks of the evaluation."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w[:, None].clone())

    def item_embeddings(self) -> torch.Tensor:
        return self.w

    def user_embedding(self, items: torch.Tensor) -> torch.Tensor:
        return torch.ones(items.shape[0], 1)


@pytest.fixture()
def build(tmp_path: Path) -> Path:
    return write_build(tmp_path / "build", markov_sequences(), num_items=40)


def test_protocol_and_rows(build: Path) -> None:
    task = NextItemTask(build, max_len=6)
    assert isinstance(task, TrainTask)
    sequences = markov_sequences()
    assert len(task.train_rows) == sum(1 for s in sequences if (len(s) - 2 if len(s) >= 3 else len(s)) >= 2)
    assert len(task.eval_rows) == sum(1 for s in sequences if len(s) >= 3)


def test_batch_layout_and_negatives(build: Path) -> None:
    task = NextItemTask(build, max_len=6, loss_cfg=LossConfig(kind="bce", num_negatives=3))
    sequences = markov_sequences()
    rows = np.arange(len(sequences) - 1)  # all but the single-item user
    rows = rows[task.train_ends[rows] >= 2]
    batch = task.make_batch(rows, torch.Generator().manual_seed(0))
    assert batch["items"].shape == (len(rows), 6) and batch["neg"].shape == (len(rows), 6, 3)
    for b, r in enumerate(rows):
        train = sequences[r][: task.train_ends[r]]
        want_items = ([0] * 6 + train[:-1])[-6:]
        want_pos = [p if s else 0 for s, p in zip(want_items, ([0] * 6 + train[1:])[-6:])]
        assert batch["items"][b].tolist() == want_items
        assert batch["pos"][b].tolist() == want_pos
        neg = batch["neg"][b]
        valid = torch.tensor(want_pos) != 0
        assert (neg[~valid] == 0).all()
        assert not set(neg[valid].flatten().tolist()) & set(train)
        assert set(neg[valid].flatten().tolist()) <= set(range(1, 41))


def test_negatives_cover_allowed_items_uniformly(build: Path) -> None:
    task = NextItemTask(build, max_len=6)
    row = int(np.argmax(task.train_ends))
    neg = task.sample_negatives(torch.tensor([row]), (20000,), torch.Generator().manual_seed(1))[0]
    allowed = sorted(set(range(1, 41)) - set(markov_sequences()[row][: task.train_ends[row]]))
    counts = torch.bincount(neg, minlength=41)[allowed].double()
    assert int(counts.sum()) == 20000  # nothing outside the allowed set
    expected = 20000 / len(allowed)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 3 * len(allowed)  # loose uniformity check (mean of chi2 = dof)


def test_batches_deterministic_given_generator(build: Path) -> None:
    task = NextItemTask(build, max_len=6)
    a = list(task.train_batches(1, 16, torch.Generator().manual_seed(5)))
    b = list(task.train_batches(1, 16, torch.Generator().manual_seed(5)))
    assert len(a) == task.num_train_batches(16)
    for x, y in zip(a, b):
        assert all(torch.equal(x[k], y[k]) for k in x)
    c = list(task.train_batches(1, 16, torch.Generator().manual_seed(6)))
    assert not torch.equal(a[0]["items"], c[0]["items"])


def test_sampled_softmax_batch(build: Path) -> None:
    task = NextItemTask(build, max_len=6, loss_cfg=LossConfig(kind="sampled_softmax", num_negatives=32))
    batch = next(task.train_batches(1, 8, torch.Generator().manual_seed(0)))
    assert batch["shared_neg"].shape == (32,) and "neg" not in batch
    probs = task.item_counts / task.item_counts.sum()
    assert torch.allclose(batch["shared_neg_logq"].double(), torch.log(torch.from_numpy(probs[batch["shared_neg"].numpy()])))



def test_sampled_softmax_uniform_negatives_from_the_loss_config(build: Path) -> None:
    """loss.shared_negatives=uniform: ids cover 1..N evenly (not by popularity), log Q = -log N."""
    cfg = LossConfig(kind="sampled_softmax", num_negatives=4000, shared_negatives="uniform")
    task = NextItemTask(build, max_len=6, loss_cfg=cfg)
    batch = next(task.train_batches(1, 8, torch.Generator().manual_seed(0)))
    neg, n = batch["shared_neg"], task.num_items
    assert int(neg.min()) >= 1 and int(neg.max()) <= n
    assert torch.allclose(batch["shared_neg_logq"], torch.full((4000,), -np.log(n), dtype=torch.float32))
    counts = torch.bincount(neg, minlength=n + 1)[1:].double()  # every id equally likely: chi-square test
    chi2 = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())
    assert chi2 < n - 1 + 5 * np.sqrt(2 * (n - 1)), chi2
    popular = NextItemTask(build, max_len=6, loss_cfg=cfg.model_copy(update={"shared_negatives": "popularity"}))
    pop = next(popular.train_batches(1, 8, torch.Generator().manual_seed(0)))["shared_neg"]
    pop_counts = torch.bincount(pop, minlength=n + 1)[1:].double()
    assert float(((pop_counts - pop_counts.mean()) ** 2 / pop_counts.mean()).sum()) > chi2  # the default is skewed

def _reference_ranks(w: np.ndarray, sequences: list[list[int]], negs: dict[int, list[int]], split: str):
    """Per-user loops: full-ranking and sampled-100 0-based ranks, pessimistic ties."""
    full, sampled = [], []
    shift = 2 if split == "valid" else 1
    for r, s in enumerate(sequences):
        if len(s) < 3:
            continue
        t = s[-shift]
        hist = set(s[:-shift]) - {t}
        others = [i for i in range(1, len(w)) if i != t and i not in hist]
        full.append(sum(w[i] >= w[t] for i in others))
        sampled.append(sum(w[i] >= w[t] for i in negs[r]))
    return full, sampled


@pytest.mark.parametrize("split", ["valid", "test"])
def test_evaluate_matches_reference(build: Path, split: str) -> None:
    task = NextItemTask(build, max_len=6, eval_batch_size=7)
    g = torch.Generator().manual_seed(2)
    w = torch.randint(0, 6, (41,), generator=g).float()  # many ties on purpose
    sequences = markov_sequences()
    negs = {r: [int(x) for x in task.eval_negatives()[r]] for r in task.eval_rows}
    full, sampled = _reference_ranks(w.numpy(), sequences, negs, split)
    m = task.evaluate(FixedScores(w), split)
    assert m["num_users"] == len(full)
    for proto, ranks in (("full", full), ("sampled100", sampled)):
        ranks = np.asarray(ranks)
        assert m[f"{proto}/hr@10"] == pytest.approx(np.mean(ranks < 10))
        assert m[f"{proto}/ndcg@5"] == pytest.approx(np.mean(np.where(ranks < 5, 1 / np.log2(ranks + 2), 0)))
        assert m[f"{proto}/mrr@20"] == pytest.approx(np.mean(np.where(ranks < 20, 1 / (ranks + 1), 0)))


def test_missing_negatives_named(build: Path) -> None:
    t = layout.read_table(build, layout.EVAL_NEGATIVES).slice(1)
    layout.write_part(t, build / layout.EVAL_NEGATIVES / layout.part_name(0))
    with pytest.raises(ValueError, match="no negatives for 1 evaluated users"):
        NextItemTask(build, max_len=6).evaluate(FixedScores(torch.zeros(41)), "test")


def test_items_outside_vocab_rejected(tmp_path: Path) -> None:
    build = write_build(tmp_path / "b", [[1, 2, 3], [2, 3, 4]], num_items=4)
    pq.write_table(pq.read_table(build / schema.VOCAB_DIR / schema.ITEMS_VOCAB).slice(0, 3),
                   build / schema.VOCAB_DIR / schema.ITEMS_VOCAB)
    with pytest.raises(ValueError, match="items must be dense ids 1..3"):
        NextItemTask(build, max_len=4)


def test_training_beats_popularity(build: Path, tmp_path: Path) -> None:
    from recsys.train import TrainConfig, fit

    task = NextItemTask(build, max_len=6)
    torch.manual_seed(0)
    model = Markov(40)
    fit(model, task, TrainConfig(epochs=30, batch_size=16, lr=0.02, seed=0), tmp_path / "run")
    trained = task.evaluate(model, "test")["full/ndcg@10"]
    pop = task.evaluate(FixedScores(torch.from_numpy(task.item_counts).float()), "test")["full/ndcg@10"]
    assert trained > 1.5 * pop and trained > 0.3, (trained, pop)


def _epoch_rows(task: NextItemTask, seed: int, bucket: bool, batch_size: int = 8) -> list[list[int]]:
    """Per batch of one epoch, its rows' left-padded input windows (a row's identity here)."""
    gen = torch.Generator().manual_seed(seed)
    return [b["items"].tolist() for b in task.train_batches(0, batch_size, gen, bucket_by_length=bucket)]


def test_bucket_by_length_same_rows_fewer_padded_columns(build: Path) -> None:
    """Length bucketing keeps the epoch's rows and batch count, is seeded, and groups similar lengths."""
    task = NextItemTask(build, max_len=12)
    plain = _epoch_rows(task, 0, bucket=False)
    bucketed = _epoch_rows(task, 0, bucket=True)
    assert len(plain) == len(bucketed)
    flat = lambda batches: sorted(tuple(r) for b in batches for r in b)  # noqa: E731
    assert flat(plain) == flat(bucketed)  # same rows (windows), each once
    assert bucketed == _epoch_rows(task, 0, bucket=True)  # deterministic for a seed
    assert bucketed != _epoch_rows(task, 1, bucket=True)

    def spread(batches: list[list[list[int]]]) -> float:
        lens = [[sum(1 for x in r if x) for r in b] for b in batches]
        return float(np.mean([max(x) - min(x) for x in lens]))

    assert spread(bucketed) < spread(plain)


@pytest.mark.parametrize("bucket", [False, True])
def test_epoch_mean_reduction_weighs_every_position_the_same(build: Path, bucket: bool) -> None:
    """loss_scale = batch positions / (batch_size x mean positions per row): the batches' positions
    add up to rows x mean positions (so the scales sum to rows / batch_size), and each batch's scaled
    BCE equals its sum over positions divided by the same constant."""
    cfg = LossConfig(kind="bce", reduction="epoch_mean")
    task = NextItemTask(build, max_len=12, loss_cfg=cfg)
    batch_size = 8
    batches = list(task.train_batches(1, batch_size, torch.Generator().manual_seed(3), bucket_by_length=bucket))
    positions = [int((b["pos"] != 0).sum()) for b in batches]
    assert sum(positions) == pytest.approx(len(task.train_rows) * task.mean_positions)
    per_batch = batch_size * task.mean_positions
    for b, v in zip(batches, positions):
        assert float(b["loss_scale"]) == pytest.approx(v / per_batch)
    torch.manual_seed(0)
    table = torch.randn(task.num_items + 1, 4)
    hidden = torch.randn(*batches[0]["items"].shape, 4)
    b = batches[0]
    scaled = next_item_loss(hidden, table, b, cfg)
    valid = b["pos"] != 0
    h = hidden[valid]
    per_pos = -F.logsigmoid((h * table[b["pos"][valid]]).sum(-1)) - F.logsigmoid(-(h * table[b["neg"][valid][:, 0]]).sum(-1))
    assert float(scaled) == pytest.approx(float(per_pos.sum()) / per_batch, rel=1e-5)
    plain = NextItemTask(build, max_len=12, loss_cfg=LossConfig(kind="bce"))
    assert "loss_scale" not in next(plain.train_batches(1, batch_size, torch.Generator().manual_seed(3)))
