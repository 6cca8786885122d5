"""CTR task (DIN, TWIN, DARE, SDIM) on a build directory: vectorised batches of
(history, target, label) built from `ctr_samples.parquet` + `sequences.parquet`, and AUC / GAUC /
logloss evaluation (recsys/eval/ctr.py).

A sample is `(split, user_id, prefix_length, item_id[, category_id], label)`; its history is
`items[:prefix_length]` of that user's sequence, cut to the most recent `max_history` behaviours.

Batch (docs/INTERFACES.md "Batches", CTR), built without a per-sample Python loop:
    user_ids [B], target_items [B], target_cats [B] (0 without categories), labels [B] float32,
    hist_items [B,L], hist_cats [B,L] RIGHT-padded (valid [0, len), time order, most recent at len-1),
    hist_lengths [B] = min(prefix_length, max_history).
L is the longest history in the batch (<= max_history), so a batch of short histories is not padded
to max_history; models are independent of the padding width. Target-relative positions are computed
in the models. Training order is a permutation drawn from the loop's torch.Generator (with
`bucket_by_length`: `bucket_pool` consecutive batches of the permutation are sorted by length, so
their padding is tight, and then the batch order is shuffled again). The settings come from the
experiment's `ctr:` section (recsys/tasks/config.py `CTRTaskConfig`).

Evaluation: all samples of the split (batches ordered by length for speed; metrics are order-free):
"auc" (all rows), "gauc" (per-user AUC weighted by impressions, users with both classes),
"logloss", "num_samples". Protocol: the build's CTR split (see its manifest / data config).

Sharding (Ray Train, `rank`/`world_size`): the task reads only its parts of the build
(`layout.worker_parts`): the sequences and CTR samples of its users, all splits, so a worker holds
O(build / world_size). Each rank scores its own users' valid/test samples; the (user, label,
score) triples are gathered to every rank (recsys/tasks/collective.py, O(evaluated samples),
three numbers per sample) and stably sorted by user, which is the row order of the whole build, so
AUC/GAUC/logloss are computed on exactly the arrays of the unsharded task (AUC is not a sum of
per-rank parts; GAUC would be, but one code path is simpler). Why not "rank 0 reads the valid
split": a sample's history is a prefix of its user's sequence, so scoring all valid samples needs
every user's sequence, i.e. the whole build on rank 0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from recsys.data import layout, schema
from recsys.data.sequences import JaggedSequences
from recsys.tasks import collective
from recsys.tasks.base import Batch
from recsys.tasks.config import DEFAULT_MAX_HISTORY, CTRTaskConfig

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SplitSamples:
    """The samples of one split, as parallel arrays (row = row in sequences; index = row in ctr_samples)."""

    index: np.ndarray  # [S] int64 row of this worker's ctr_samples (all parts when unsharded)
    rows: np.ndarray  # [S] int64 sequence row
    user_ids: np.ndarray  # [S] int64
    prefix: np.ndarray  # [S] int64
    items: np.ndarray  # [S] int64
    cats: np.ndarray  # [S] int64 (0 without categories)
    labels: np.ndarray  # [S] float32

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def take(self, sel: np.ndarray) -> "SplitSamples":
        return SplitSamples(*(getattr(self, f)[sel] for f in self.__dataclass_fields__))


def read_ctr_samples(build_dir: Path, sequences: JaggedSequences, num_items: int | None = None,
                     parts: list[int] | None = None) -> dict[str, SplitSamples]:
    """The build's ctr_samples `parts` (default all; `sequences` must hold the same parts) -> per-split
    arrays; every bad row is an error naming the column."""
    path = build_dir / layout.CTR_SAMPLES
    if not path.is_dir():
        raise FileNotFoundError(f"CTR samples not found: {path} (build the dataset with CTR samples first)")
    table = layout.read_table(build_dir, layout.CTR_SAMPLES, parts)
    for col in (schema.SPLIT, schema.USER, schema.PREFIX_LENGTH, schema.ITEM, schema.LABEL):
        if col not in table.column_names:
            raise ValueError(f"{path}: missing column {col!r}")
    split = table[schema.SPLIT].to_numpy(zero_copy_only=False).astype(str)
    bad = ~np.isin(split, SPLITS)
    if bad.any():
        raise ValueError(f"{path}: column 'split' has values {sorted(set(split[bad]))[:5]} (allowed: {SPLITS})")
    users = table[schema.USER].to_numpy().astype(np.int64)
    prefix = table[schema.PREFIX_LENGTH].to_numpy().astype(np.int64)
    items = table[schema.ITEM].to_numpy().astype(np.int64)
    labels = table[schema.LABEL].to_numpy()
    cats = (table[schema.CATEGORY].to_numpy().astype(np.int64) if schema.CATEGORY in table.column_names
            else np.zeros(len(items), dtype=np.int64))
    lookup = sequences.row_of_user()
    known = (users >= 0) & (users < len(lookup))
    rows = np.where(known, lookup[np.where(known, users, 0)], -1)
    if (rows < 0).any():
        raise ValueError(f"{path}: column 'user_id' has {int((rows < 0).sum())} users without a sequence "
                         f"(e.g. {users[rows < 0][:3].tolist()})")
    lengths = sequences.lengths[rows]
    if ((prefix < 0) | (prefix > lengths)).any():
        i = int(np.flatnonzero((prefix < 0) | (prefix > lengths))[0])
        raise ValueError(f"{path}: column 'prefix_length' out of [0, sequence length] at row {i} "
                         f"({prefix[i]} vs {lengths[i]})")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{path}: column 'label' must be 0 or 1")
    if (items < 1).any() or (num_items is not None and (items > num_items).any()):
        raise ValueError(f"{path}: column 'item_id' must be dense ids in 1..{num_items}")
    out = {}
    for name in SPLITS:
        sel = np.flatnonzero(split == name)
        out[name] = SplitSamples(sel.astype(np.int64), rows[sel], users[sel], prefix[sel], items[sel], cats[sel],
                                 labels[sel].astype(np.float32))
    return out


class CTRTask:
    """TrainTask for the CTR models (see module doc)."""

    primary_metric = "auc"

    def __init__(
        self,
        build_dir: str | Path,
        *,
        max_history: int = DEFAULT_MAX_HISTORY,
        eval_batch_size: int = 512,
        bucket_pool: int = 8,
        rank: int = 0,
        world_size: int = 1,
        sequences: JaggedSequences | None = None,
    ) -> None:
        self.build_dir = Path(build_dir)
        if max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {max_history}")
        self.rank, self.world_size = rank, world_size
        self.parts = collective.shard_parts(self.build_dir, rank, world_size)  # this worker's users
        if eval_batch_size < 1 or bucket_pool < 1:
            raise ValueError("eval_batch_size and bucket_pool must be >= 1")
        self.max_history, self.eval_batch_size, self.bucket_pool = max_history, eval_batch_size, bucket_pool
        self.sequences = sequences if sequences is not None else JaggedSequences.read(
            self.build_dir, self.parts, columns=(schema.SEQ_CATEGORIES,))  # no times: unused
        items_vocab = self.build_dir / schema.VOCAB_DIR / schema.ITEMS_VOCAB
        self.num_items = int(pq.read_metadata(str(items_vocab)).num_rows) if items_vocab.is_file() else None
        self.splits = read_ctr_samples(self.build_dir, self.sequences, self.num_items, self.parts)
        self.train = self.splits["train"]  # this worker's users' samples (all of them when unsharded)
        self.has_categories = self.sequences.categories is not None
        log.info("CTR task %s: rank %d/%d, parts %s: users=%d samples train=%d valid=%d test=%d, max_history=%d",
                 self.build_dir, rank, world_size, self.parts, self.sequences.num_users, len(self.train),
                 len(self.splits["valid"]), len(self.splits["test"]), max_history)

    @classmethod
    def from_config(cls, build_dir: str | Path, cfg: CTRTaskConfig, *, rank: int = 0, world_size: int = 1,
                    sequences: JaggedSequences | None = None) -> "CTRTask":
        """The task of an experiment's `ctr:` section (this worker's shard)."""
        return cls(build_dir, max_history=cfg.max_history, eval_batch_size=cfg.eval_batch_size,
                   bucket_pool=cfg.bucket_pool, rank=rank, world_size=world_size, sequences=sequences)

    # --- batches --------------------------------------------------------------------------------
    def num_samples(self) -> dict[str, int]:
        return {name: len(s) for name, s in self.splits.items()}

    def num_train_batches(self, batch_size: int) -> int:
        return math.ceil(len(self.train) / batch_size)

    def make_batch(self, s: SplitSamples) -> Batch:
        """The CTR batch of samples `s` (vectorised window extraction)."""
        lengths = np.minimum(s.prefix, self.max_history)
        width = max(int(lengths.max(initial=0)), 1)
        hist = self.sequences.windows(s.rows, s.prefix, width, align="right_pad")  # [B,L]
        if self.has_categories:
            hist_cats = self.sequences.windows(s.rows, s.prefix, width, values=self.sequences.categories, align="right_pad")
        else:
            hist_cats = np.zeros_like(hist)
        return {
            "user_ids": torch.from_numpy(s.user_ids.copy()),
            "target_items": torch.from_numpy(s.items.copy()),
            "target_cats": torch.from_numpy(s.cats.copy()),
            "hist_items": torch.from_numpy(np.ascontiguousarray(hist, dtype=np.int64)),
            "hist_cats": torch.from_numpy(np.ascontiguousarray(hist_cats, dtype=np.int64)),
            "hist_lengths": torch.from_numpy(lengths.astype(np.int64)),
            "labels": torch.from_numpy(s.labels.copy()),
        }

    def train_order(self, batch_size: int, generator: torch.Generator, bucket_by_length: bool = False
                    ) -> list[np.ndarray]:
        """Positions in the train shard, one array per batch (all randomness from `generator`)."""
        n = len(self.train)
        perm = torch.randperm(n, generator=generator).numpy()
        batches = [perm[i : i + batch_size] for i in range(0, n, batch_size)]
        if bucket_by_length and self.bucket_pool > 1:
            lengths = np.minimum(self.train.prefix, self.max_history)
            pooled = []
            span = batch_size * self.bucket_pool
            for i in range(0, n, span):
                block = perm[i : i + span]
                block = block[np.argsort(lengths[block], kind="stable")]
                pooled += [block[j : j + batch_size] for j in range(0, len(block), batch_size)]
            order = torch.randperm(len(pooled), generator=generator).numpy()
            batches = [pooled[k] for k in order]
        return batches

    def train_batches(self, epoch: int, batch_size: int, generator: torch.Generator,
                      bucket_by_length: bool = False) -> Iterator[Batch]:
        """One epoch of training batches (module doc: order and length bucketing)."""
        for sel in self.train_order(batch_size, generator, bucket_by_length):
            yield self.make_batch(self.train.take(sel))

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return model.training_loss(batch)

    # --- evaluation -----------------------------------------------------------------------------
    def eval_batches(self, split: str) -> Iterator[tuple[np.ndarray, Batch]]:
        """(positions in the split, batch) in order of history length (tight padding)."""
        if split not in self.splits:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        s = self.splits[split]
        order = np.argsort(np.minimum(s.prefix, self.max_history), kind="stable")
        for i in range(0, len(s), self.eval_batch_size):
            sel = order[i : i + self.eval_batch_size]
            yield sel, self.make_batch(s.take(sel))

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, split: str) -> np.ndarray:
        """Logits of every sample of `split`, in the split's row order."""
        s = self.splits[split]
        out = np.zeros(len(s), dtype=np.float64)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        try:
            for sel, batch in self.eval_batches(split):
                batch = {k: v.to(device) for k, v in batch.items()}
                out[sel] = model(batch).double().cpu().numpy()
        finally:
            model.train(was_training)
        return out

    def metric_names(self) -> list[str]:
        """The validation metrics that can select weights: the higher-is-better ones `evaluate`
        returns (logloss is lower-is-better, num_samples a count)."""
        return ["auc", "gauc"]

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        """Metrics of all samples of `split` over every worker's users (a collective when sharded:
        every rank must call it; see the module doc)."""
        from recsys.eval.ctr import ctr_metrics

        s = self.splits[split]
        scores = self.predict(model, split)
        users = collective.all_concat(s.user_ids, self.world_size)
        labels = collective.all_concat(s.labels, self.world_size)
        scores = collective.all_concat(scores, self.world_size)
        if users.size == 0:
            raise ValueError(f"split {split!r} has no CTR samples in {self.build_dir}")
        if self.world_size > 1:  # ranks hold disjoint users: user order = the unsharded row order
            order = np.argsort(users, kind="stable")
            users, labels, scores = users[order], labels[order], scores[order]
        metrics = ctr_metrics(users, labels, scores)
        return {**{k: float(v) for k, v in metrics.items()}, "num_samples": float(users.size)}
