"""CTRTask: batches equal a slow per-sample construction (history = items[:prefix_length], most
recent max_history, right-padded), shuffling/sharding, bad input, and evaluation = ctr_metrics."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys.data import layout, schema
from recsys.eval.ctr import ctr_metrics
from recsys.data.sequences import JaggedSequences
from recsys.data.synth import SynthConfig, generate
from recsys.tasks.base import TrainTask
from recsys.tasks.ctr import CTRTask
from tests.builds import replace_table
from tests.recsys.tasks.shards import repartition

MAX_HISTORY = 40


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small planted build whose ctr_samples are replaced by random prefixes (0..full length)."""
    out = tmp_path_factory.mktemp("ctr")
    generate(SynthConfig(num_users=60, num_categories=10, items_per_cluster=30, length_median=150, min_length=140,
                         max_length=300, deep_offset=100, seed=1), out)
    sequences = JaggedSequences.read(out)
    rng = np.random.default_rng(0)
    n = 500
    rows = rng.integers(0, sequences.num_users, n)
    prefix = (rng.random(n) * (sequences.lengths[rows] + 1)).astype(np.int32)
    prefix[:5] = 0
    prefix[5:10] = sequences.lengths[rows[5:10]]
    items = rng.integers(1, 600, n)
    replace_table(out, layout.CTR_SAMPLES, pa.table({
        schema.SPLIT: np.array(["train", "valid", "test", "train", "train"])[rng.integers(0, 5, n)],
        schema.USER: sequences.user_ids[rows], schema.PREFIX_LENGTH: prefix, schema.ITEM: items,
        schema.CATEGORY: (items - 1) // 60 + 1, schema.LABEL: rng.integers(0, 2, n).astype(np.int8),
    }))
    return out


def _slow_batch(sequences: JaggedSequences, table: pa.Table, idx: np.ndarray, max_history: int) -> dict[str, np.ndarray]:
    lut = sequences.row_of_user()
    d = table.to_pydict()
    hists, cats = [], []
    for i in idx:
        r = lut[d[schema.USER][i]]
        p = d[schema.PREFIX_LENGTH][i]
        s, e = sequences.offsets[r], sequences.offsets[r] + p
        hists.append(sequences.items[s:e][-max_history:] if p else np.zeros(0, dtype=np.int64))
        cats.append(sequences.categories[s:e][-max_history:] if p else np.zeros(0, dtype=np.int64))
    width = max(1, max(len(h) for h in hists))
    pad = lambda xs: np.array([np.r_[x, np.zeros(width - len(x), dtype=np.int64)] for x in xs])  # noqa: E731
    return {"hist_items": pad(hists), "hist_cats": pad(cats), "hist_lengths": np.array([len(h) for h in hists]),
            "target_items": np.array(d[schema.ITEM])[idx], "target_cats": np.array(d[schema.CATEGORY])[idx],
            "labels": np.array(d[schema.LABEL], dtype=np.float32)[idx], "user_ids": np.array(d[schema.USER])[idx]}


def test_batches_match_per_sample_construction(build: Path) -> None:
    task = CTRTask(build, max_history=MAX_HISTORY, eval_batch_size=64)
    assert isinstance(task, TrainTask) and task.primary_metric == "auc"
    table = layout.read_table(build, layout.CTR_SAMPLES)
    for split in ("train", "valid", "test"):
        s = task.splits[split]
        for sel, batch in task.eval_batches(split):
            want = _slow_batch(task.sequences, table, s.index[sel], MAX_HISTORY)
            assert set(batch) == set(want)
            for key, value in want.items():
                np.testing.assert_array_equal(batch[key].numpy(), value, err_msg=f"{split}/{key}")
            assert batch["hist_items"].dtype == torch.int64 and batch["labels"].dtype == torch.float32
    # right padding: nothing after the length, the most recent behaviour at length-1
    batch = task.make_batch(task.splits["train"])
    mask = torch.arange(batch["hist_items"].shape[1])[None] < batch["hist_lengths"][:, None]
    assert torch.all(batch["hist_items"][~mask] == 0) and torch.all(batch["hist_items"][mask] > 0)
    assert batch["hist_items"].shape[1] == MAX_HISTORY and int(batch["hist_lengths"].min()) == 0


def test_shuffle_from_generator_and_shards(build: Path) -> None:
    task = CTRTask(build, max_history=MAX_HISTORY)
    a = [b["target_items"] for b in task.train_batches(1, 32, torch.Generator().manual_seed(5))]
    b = [b["target_items"] for b in task.train_batches(1, 32, torch.Generator().manual_seed(5))]
    c = [b["target_items"] for b in task.train_batches(1, 32, torch.Generator().manual_seed(6))]
    assert len(a) == task.num_train_batches(32) and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert sorted(torch.cat(a).tolist()) == sorted(task.train.items.tolist())
    bucketed = CTRTask(build, max_history=MAX_HISTORY, bucket_pool=4)
    order = bucketed.train_order(32, torch.Generator().manual_seed(5), bucket_by_length=True)
    got = np.sort(np.concatenate(order))
    np.testing.assert_array_equal(got, np.arange(len(bucketed.train)))
    # bucketing by length: less padding than the plain shuffle (same samples, same batch count)
    lengths = np.minimum(bucketed.train.prefix, MAX_HISTORY)
    plain = bucketed.train_order(32, torch.Generator().manual_seed(5))
    assert len(order) == len(plain)
    assert sum(lengths[o].max() * len(o) for o in order) < sum(lengths[o].max() * len(o) for o in plain)
    # a rank reads its parts (a hash re-partition of the same rows): ranks hold disjoint users and
    # together every train sample once
    parted = repartition(build, build.parent / "ctr_parts", 5)
    key = lambda s: set(zip(s.user_ids.tolist(), s.prefix.tolist(), s.items.tolist()))  # noqa: E731
    shards = [CTRTask(parted, max_history=MAX_HISTORY, rank=r, world_size=3) for r in range(3)]
    assert [t.parts for t in shards] == [[0, 3], [1, 4], [2]]
    assert sum(len(t.train) for t in shards) == len(task.train)
    assert set().union(*(key(t.train) for t in shards)) == key(task.train)
    users = [set(t.sequences.user_ids.tolist()) for t in shards]
    assert all(not users[i] & users[j] for i in range(3) for j in range(i + 1, 3))
    assert all(set(t.train.user_ids.tolist()) <= u for t, u in zip(shards, users))


def test_bad_samples_name_the_column(build: Path, tmp_path: Path) -> None:
    table = layout.read_table(build, layout.CTR_SAMPLES)
    bad = tmp_path / "bad"
    (bad / schema.VOCAB_DIR).mkdir(parents=True)
    shutil.copytree(build / layout.SEQUENCES, bad / layout.SEQUENCES)
    shutil.copy(build / schema.MANIFEST_FILE, bad / schema.MANIFEST_FILE)
    prefix = table[schema.PREFIX_LENGTH].to_numpy().copy()
    prefix[3] = 10_000
    replace_table(bad, layout.CTR_SAMPLES, table.set_column(2, schema.PREFIX_LENGTH, pa.array(prefix)))
    with pytest.raises(ValueError, match="prefix_length"):
        CTRTask(bad)
    replace_table(bad, layout.CTR_SAMPLES, table.drop([schema.LABEL]))
    with pytest.raises(ValueError, match="label"):
        CTRTask(bad)


class _Oracle(torch.nn.Module):
    """Scores = target item id / 100 + history length / 1000 (deterministic, checks plumbing)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["target_items"].float() / 100 + batch["hist_lengths"].float() / 1000 + self.w


def test_evaluate_equals_ctr_metrics_in_sample_order(build: Path) -> None:
    task = CTRTask(build, max_history=MAX_HISTORY, eval_batch_size=16)
    s = task.splits["test"]
    got = task.evaluate(_Oracle(), "test")
    want = ctr_metrics(s.user_ids, s.labels, s.items / 100 + np.minimum(s.prefix, MAX_HISTORY) / 1000)
    for k in ("auc", "gauc", "logloss"):
        assert got[k] == pytest.approx(want[k], rel=1e-6)
    assert got["num_samples"] == len(s)

