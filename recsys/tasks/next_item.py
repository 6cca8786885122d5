"""Next-item task (SASRec, MQSA-TED) on a build directory: vectorised batches with on-the-fly
negatives, and full-ranking / sampled-100 evaluation (docs/DATA.md "Evaluation protocols").

Split (leave-one-out by position, recsys/data/schema.py): for a user with >= 3 items,
items[:-2] is train, items[-2] validation, items[-1] test; a user with fewer items keeps all of
them in train and is not evaluated. A user trains when the train part has >= 2 items (at least one
next-item target), as in the official code.

Training batch of B users (no per-sample Python loop):
    items [B,n] = last n train items before the last one (left-padded), pos [B,n] = the next item
    at each non-pad position of items (0 elsewhere), neg [B,n,K] = uniform over items not in the
    user's train set (vectorised rejection sampling, membership by searchsorted on the sorted
    keys row*(N+1)+item), 0 where pos is 0; for loss kind "sampled_softmax": shared_neg [M] drawn
    from the train-item frequency distribution and shared_neg_logq [M] = log Q(item).
    All randomness comes from the passed torch.Generator. With loss reduction "epoch_mean":
    loss_scale [] = valid positions of the batch / (batch_size x mean valid positions per train
    row), so the batch-mean loss becomes a sum over positions over a constant (recsys/losses.py).

Evaluation (model in eval mode, no grad), batches of users, user vector u = model.user_embedding
of the last n items before the target (valid: before items[-2]; test: before items[-1], i.e. the
validation item is part of the test input):
    full        scores u·E over all N items [B,N+1], padding column and the user's history
                (valid: items[:-2]; test: items[:-1]) set to -inf, EXCEPT the target item itself
                when it also occurs in the history (repeat consumption is not made unrankable).
    sampled100  the target + the user's 100 persisted negatives (eval_negatives.parquet).
    Rank with the pessimistic tie rule (recsys/eval/ranking.py); HR/NDCG/MRR@5/10/20.
Keys: "full/ndcg@10", "sampled100/hr@10", ..., plus "num_users".

Sharding (Ray Train, `rank`/`world_size`): the task reads only its parts of the build
(`layout.worker_parts`): the sequences and eval negatives of its users, so a worker holds
O(build / world_size); the item count comes from the vocabulary. What spans all users is combined
over the workers (recsys/tasks/collective.py): the mean train positions and the train item
frequencies (all-reduced sums, integers, so exact), the fixed validation sample (the evaluated
user ids are gathered, O(users), and sampled exactly as unsharded), and the metrics: each rank
ranks its own users and the per-metric sums and user counts are all-reduced, so every rank
returns the metrics of all users (equal to the unsharded task's up to the float64 summation
order).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from recsys.data import layout, schema
from recsys.data.sequences import JaggedSequences
from recsys.data.vocab import vocabulary_size
from recsys.losses import LossConfig
from recsys.eval.protocol import NEXT_ITEM_PROTOCOLS
from recsys.eval.ranking import DEFAULT_KS, accumulate, finalize, metric_sums, rank_of_target
from recsys.tasks import collective
from recsys.tasks.base import Batch

PROTOCOLS = NEXT_ITEM_PROTOCOLS


class NextItemTask:
    """TrainTask for next-item models (see module doc)."""

    primary_metric = "full/ndcg@10"

    def __init__(
        self,
        build_dir: str | Path,
        max_len: int,
        loss_cfg: LossConfig | None = None,
        *,
        eval_batch_size: int = 256,
        valid_max_users: int | None = None,
        ks: tuple[int, ...] = DEFAULT_KS,
        rank: int = 0,
        world_size: int = 1,
        sequences: JaggedSequences | None = None,
    ) -> None:
        self.build_dir = Path(build_dir)
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_len = max_len
        self.loss_cfg = loss_cfg or LossConfig()
        self.eval_batch_size = eval_batch_size
        self.valid_max_users = valid_max_users
        self.ks = tuple(ks)
        self.rank, self.world_size = rank, world_size
        self.parts = collective.shard_parts(self.build_dir, rank, world_size)  # this worker's users
        self.sequences = sequences if sequences is not None else JaggedSequences.read(
            self.build_dir, self.parts, columns=())  # items only
        self.num_items = vocabulary_size(self.build_dir, "items")
        items = self.sequences.items
        if items.size and (items.min() < 1 or items.max() > self.num_items):
            raise ValueError(
                f"sequences.parquet: items must be dense ids 1..{self.num_items} (vocab size), "
                f"found {items.min()}..{items.max()}"
            )
        lengths = self.sequences.lengths
        #: exclusive end of each row's train part: len-2 for evaluated users, len otherwise
        self.train_ends = np.where(lengths >= 3, lengths - 2, lengths).astype(np.int64)
        self.train_rows = np.flatnonzero(self.train_ends >= 2)  # this worker's users (all when unsharded)
        self.eval_rows = np.flatnonzero(lengths >= 3)

        keys, local_counts = self._train_membership()
        self._train_keys = torch.from_numpy(keys)  # sorted keys row*(N+1)+item of every (row, train item)
        counts = collective.all_sum(local_counts.astype(np.float64), world_size)
        counts[0] = 0.0
        self.item_counts = counts  # train-part frequency per item id over all workers (index 0 = padding)
        #: mean valid (input, target) positions per train row (all workers' rows, so every Ray
        #: worker scales by the same constant), windows capped at max_len
        positions = np.minimum(self.train_ends[self.train_rows] - 1, max_len)
        total, count = collective.all_sum(np.array([positions.sum(), positions.size], dtype=np.int64), world_size)
        self.mean_positions = float(total) / float(count) if count else 0.0
        self.valid_rows = self._valid_sample()
        self._negatives: np.ndarray | None = None

    def _train_membership(self, chunk_events: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
        """(sorted unique keys row*(N+1)+item over every row's train part, train item counts),
        over blocks of rows of about `chunk_events` events: rows ascend, so the blocks' keys are
        disjoint and ascending, and the temporaries stay O(block) instead of several x events."""
        sequences, n1 = self.sequences, self.num_items + 1
        counts = np.zeros(n1, dtype=np.int64)
        keys = []
        starts = np.searchsorted(sequences.offsets[:-1], np.arange(0, sequences.items.size, chunk_events), side="right") - 1
        bounds = np.unique(np.r_[np.maximum(starts, 0), sequences.num_users])
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            rows = np.arange(lo, hi, dtype=np.int64)
            ends = self.train_ends[rows]
            index = np.repeat(sequences.offsets[rows] - np.r_[0, np.cumsum(ends)[:-1]], ends) + np.arange(ends.sum())
            items = sequences.items[index]
            keys.append(np.unique(np.repeat(rows, ends) * n1 + items))
            counts += np.bincount(items, minlength=n1)
        return (np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)), counts

    # ------------------------------------------------------------------------------ training

    def num_train_batches(self, batch_size: int) -> int:
        return math.ceil(len(self.train_rows) / batch_size)

    def _in_train_set(self, rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """rows [B] (broadcast against items [B,...]) -> bool mask: item in that row's train set."""
        keys = rows.reshape(rows.shape + (1,) * (items.dim() - 1)) * (self.num_items + 1) + items
        idx = torch.searchsorted(self._train_keys, keys).clamp_max(self._train_keys.numel() - 1)
        return self._train_keys[idx] == keys

    def sample_negatives(self, rows: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator,
                         max_rounds: int = 1000) -> torch.Tensor:
        """Uniform items in 1..N not in each row's train set, [B, *shape] (vectorised rejection)."""
        neg = torch.randint(1, self.num_items + 1, (rows.numel(), *shape), generator=generator)
        bad = self._in_train_set(rows, neg)
        for _ in range(max_rounds):
            n_bad = int(bad.sum())
            if n_bad == 0:
                return neg
            neg[bad] = torch.randint(1, self.num_items + 1, (n_bad,), generator=generator)
            bad = self._in_train_set(rows, neg)
        raise RuntimeError(
            f"negative sampling did not finish in {max_rounds} rounds: some user's train set covers almost "
            f"all {self.num_items} items"
        )

    def make_batch(self, rows: np.ndarray, generator: torch.Generator, batch_size: int | None = None) -> Batch:
        """Training batch of `rows` (module doc); batch_size = the epoch's nominal batch size (for
        loss_scale; default len(rows))."""
        ends = self.train_ends[rows]
        items = self.sequences.windows(rows, ends - 1, self.max_len)  # [B,n]
        pos = self.sequences.windows(rows, ends, self.max_len)  # [B,n]
        items_t = torch.from_numpy(items)
        pos_t = torch.from_numpy(pos).masked_fill(items_t == 0, 0)
        batch: Batch = {"items": items_t, "pos": pos_t}
        if self.loss_cfg.reduction == "epoch_mean":
            positions = float((pos_t != 0).sum())
            batch["loss_scale"] = torch.tensor(positions / ((batch_size or len(rows)) * self.mean_positions))
        kind = self.loss_cfg.kind
        if kind == "bce":
            rows_t = torch.from_numpy(rows)
            neg = self.sample_negatives(rows_t, (self.max_len, self.loss_cfg.num_negatives), generator)
            batch["neg"] = neg.masked_fill((pos_t == 0).unsqueeze(-1), 0)  # [B,n,K]
        elif kind == "sampled_softmax":
            m = self.loss_cfg.num_negatives
            if self.loss_cfg.shared_negatives == "uniform":
                shared = torch.randint(1, self.num_items + 1, (m,), generator=generator)
                logq = torch.full((m,), -math.log(self.num_items))
            else:
                probs = torch.from_numpy(self.item_counts / self.item_counts.sum())
                shared = torch.multinomial(probs, m, replacement=True, generator=generator)
                logq = torch.log(probs[shared]).float()
            batch["shared_neg"], batch["shared_neg_logq"] = shared, logq
        return batch

    def train_batches(self, epoch: int, batch_size: int, generator: torch.Generator,
                      bucket_by_length: bool = False) -> Iterator[Batch]:
        """One epoch: every train row once, in batches of `batch_size` (the last may be smaller).

        bucket_by_length: rows are shuffled, then stably sorted by input length (capped at
        max_len), cut into batches, and the batch order is shuffled (all with `generator`). Same
        rows and number of batches per epoch; batches hold users of similar length, so the models'
        `trim_padding` cuts most padded columns (Games: median train length 4 at max_len 50).
        It changes which users share a batch, not the data. With the default loss reduction
        "batch_mean" it does change the objective: a batch of short users has few positions, so
        each of them weighs more than under random batches (on Games, SASRec then converged
        slower and stayed lower: test sampled-100 NDCG@10 0.513 vs 0.532 at 201 epochs).
        Loss reduction "epoch_mean" (recsys/losses.py) keeps every position's weight, so
        bucketing is then only the speed option (benchmarks/sasrec_games.py).
        """
        order = torch.randperm(len(self.train_rows), generator=generator).numpy()
        rows = self.train_rows[order]
        starts = np.arange(0, len(rows), batch_size)
        if bucket_by_length:
            lengths = np.minimum(self.train_ends[rows] - 1, self.max_len)
            rows = rows[np.argsort(lengths, kind="stable")]
            starts = starts[torch.randperm(len(starts), generator=generator).numpy()]
        for i in starts:
            yield self.make_batch(rows[i : i + batch_size], generator, batch_size)

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return model.training_loss(batch, self.loss_cfg)

    # ------------------------------------------------------------------------------ evaluation

    def metric_names(self) -> list[str]:
        """The validation metrics that can select weights (all higher-is-better): every key
        `evaluate` returns besides "num_users", "<protocol>/<hr|ndcg|mrr>@<k>"."""
        return [f"{p}/{m}@{k}" for p in PROTOCOLS for k in self.ks for m in ("hr", "ndcg", "mrr")]

    def eval_negatives(self) -> np.ndarray:
        """[U, 100] persisted sampled-100 negatives per sequences row (-1 = none), read once."""
        if self._negatives is None:
            path = self.build_dir / layout.EVAL_NEGATIVES
            if not path.is_dir():
                raise FileNotFoundError(f"{path} not found: the sampled-100 protocol needs it")
            table = layout.read_table(self.build_dir, layout.EVAL_NEGATIVES)
            for col in (schema.USER, schema.NEGATIVES):
                if col not in table.column_names:
                    raise ValueError(f"{path}: missing column {col!r}")
            users = table[schema.USER].to_numpy().astype(np.int64)
            neg_lists = JaggedSequences.from_table(table.rename_columns(
                [schema.SEQ_ITEMS if c == schema.NEGATIVES else c for c in table.column_names]))
            width = int(neg_lists.lengths.max(initial=0))
            lookup = self.sequences.row_of_user()
            out = np.full((self.sequences.num_users, width), -1, dtype=np.int64)
            known = users < lookup.size
            rows = np.where(known, lookup[np.minimum(users, lookup.size - 1)], -1)
            keep = rows >= 0
            lens = neg_lists.lengths
            dense = neg_lists.windows(np.arange(len(users)), lens, width, align="right_pad")
            dense = np.where(np.arange(width)[None, :] < lens[:, None], dense, -1)
            out[rows[keep]] = dense[keep]
            has = np.zeros(self.sequences.num_users, dtype=bool)
            has[rows[keep]] = lens[keep] > 0
            missing = self.eval_rows[~has[self.eval_rows]]
            if missing.size:
                raise ValueError(
                    f"{path}: no negatives for {missing.size} evaluated users (first user_id "
                    f"{int(self.sequences.user_ids[missing[0]])})"
                )
            self._negatives = out
        return self._negatives

    def _valid_sample(self) -> np.ndarray:
        """This worker's rows of the validation users: all evaluated users, or a fixed random
        sample of `valid_max_users` of them drawn over ALL workers' users in user order (the same
        users whatever the sharding), independent of training randomness."""
        rows = self.eval_rows
        if self.valid_max_users is None:
            return rows
        users = collective.all_concat(self.sequences.user_ids[rows], self.world_size)
        if users.size <= self.valid_max_users:
            return rows
        users = np.sort(users)  # unsharded: rows are in user order
        pick = np.random.default_rng(0).choice(users.size, self.valid_max_users, replace=False)
        return rows[np.isin(self.sequences.user_ids[rows], users[pick])]

    def _rows_for(self, split: str) -> np.ndarray:
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        return self.valid_rows if split == "valid" else self.eval_rows

    @torch.no_grad()
    def batch_ranks(self, model: torch.nn.Module, split: str, protocols: tuple[str, ...] = ("full", "sampled100")
                    ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """(sequence rows, {protocol: 0-based rank of the target [B]}) per evaluation batch of
        `split` (module doc: the candidates of each protocol; ties pessimistic, recsys/eval/ranking.py).
        The model must be in eval mode."""
        rows_all = self._rows_for(split)
        if rows_all.size == 0 and self.world_size == 1:  # sharded: evaluate checks the total
            raise ValueError(f"no users with >= 3 items in {self.build_dir}: nothing to evaluate")
        device = next(model.parameters()).device
        items_emb = model.item_embeddings()  # [N+1,d]
        negatives = self.eval_negatives() if "sampled100" in protocols else None
        shift = 2 if split == "valid" else 1  # target = items[-shift]
        for i in range(0, rows_all.size, self.eval_batch_size):
            rows = rows_all[i : i + self.eval_batch_size]
            hist_len = self.sequences.lengths[rows] - shift  # [B] history = items[:hist_len]
            target = torch.from_numpy(self.sequences.items[self.sequences.offsets[rows] + hist_len]).to(device)  # [B]
            items = torch.from_numpy(self.sequences.windows(rows, hist_len, self.max_len)).to(device)  # [B,n]
            user = model.user_embedding(items)  # [B,d]
            out: dict[str, torch.Tensor] = {}
            if "full" in protocols:
                out["full"] = rank_of_target(self._full_scores(user, items_emb, rows, hist_len, target), target)
            if negatives is not None:
                neg = torch.from_numpy(negatives[rows]).to(device)  # [B,100]
                cand = torch.cat([target[:, None], neg.clamp_min(0)], dim=1)  # [B,101]
                s = torch.einsum("bd,bcd->bc", user, items_emb[cand])
                s = s.masked_fill(torch.cat([torch.zeros_like(target[:, None], dtype=torch.bool), neg < 0], 1),
                                  -torch.inf)
                out["sampled100"] = rank_of_target(s, torch.zeros_like(target))
            yield rows, out

    def _full_scores(self, user: torch.Tensor, items_emb: torch.Tensor, rows: np.ndarray, hist_len: np.ndarray,
                     target: torch.Tensor) -> torch.Tensor:
        """[B,N+1] scores over all items; padding and the history (but not the target) at -inf."""
        device = user.device
        scores = user @ items_emb.T  # [B,N+1]
        scores[:, 0] = -torch.inf
        b = np.repeat(np.arange(rows.size), hist_len)
        flat = np.repeat(self.sequences.offsets[rows], hist_len) + (
            np.arange(hist_len.sum()) - np.repeat(np.cumsum(hist_len) - hist_len, hist_len))
        hist_items = torch.from_numpy(self.sequences.items[flat]).to(device)
        b_t = torch.from_numpy(b).to(device)
        keep = hist_items != target[b_t]
        scores[b_t[keep], hist_items[keep]] = -torch.inf
        return scores

    def ranks(self, model: torch.nn.Module, split: str, protocols: tuple[str, ...] = ("full", "sampled100")
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Every evaluated user's rank per protocol: (sequence rows [U], {protocol: ranks [U]}) (the
        per-user values the report bootstraps)."""
        was_training = model.training
        model.eval()
        rows, ranks = [], {p: [] for p in protocols}
        try:
            for r, out in self.batch_ranks(model, split, protocols):
                rows.append(r)
                for p, v in out.items():
                    ranks[p].append(v.cpu().numpy())
        finally:
            model.train(was_training)
        return np.concatenate(rows), {p: np.concatenate(v).astype(np.int64) for p, v in ranks.items()}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, split: str, protocols: tuple[str, ...] = ("full", "sampled100")
                 ) -> dict[str, float]:
        """HR/NDCG/MRR@ks under the full-ranking and sampled-100 protocols on "valid" or "test",
        over every worker's users (a collective when sharded: every rank must call it)."""
        was_training = model.training
        model.eval()
        sums: dict[str, dict[str, float]] = {p: {} for p in protocols}
        n_local = 0
        try:
            for rows, out in self.batch_ranks(model, split, protocols):
                n_local += rows.size
                for proto, r in out.items():
                    accumulate(sums[proto], metric_sums(r, self.ks))
        finally:
            model.train(was_training)
        n_users = int(collective.all_sum(np.array([n_local], dtype=np.int64), self.world_size)[0])
        if n_users == 0:
            raise ValueError(f"no users with >= 3 items in {self.build_dir}: nothing to evaluate")
        keys = [f"{m}@{k}" for k in self.ks for m in ("hr", "ndcg", "mrr")]  # metric_sums' keys
        result: dict[str, float] = {"num_users": float(n_users)}
        for proto, s in sums.items():
            total = collective.all_sum(np.array([s.get(k, 0.0) for k in keys], dtype=np.float64), self.world_size)
            result.update({f"{proto}/{k}": v for k, v in finalize(dict(zip(keys, total.tolist())), n_users).items()})
        return result
