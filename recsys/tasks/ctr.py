"""CTR task (DIN, TWIN, DARE, SDIM) on a build directory: vectorised batches of
(history, target, label) built from `ctr_samples.parquet` + `sequences.parquet`, and AUC / GAUC /
logloss evaluation (recsys/ctr_metrics.py).

A sample is `(split, user_id, prefix_length, item_id[, category_id], label)`; its history is
`items[:prefix_length]` of that user's sequence, cut to the most recent `max_history` behaviours.

Batch (docs/INTERFACES.md "Batches", CTR), built without a per-sample Python loop:
    user_ids [B], target_items [B], target_cats [B] (0 without categories), labels [B] float32,
    hist_items [B,L], hist_cats [B,L] RIGHT-padded (valid [0, len), time order, most recent at len-1),
    hist_lengths [B] = min(prefix_length, max_history).
L is the longest history in the batch (<= max_history), so a batch of short histories is not padded
to max_history; models are independent of the padding width. Target-relative positions are computed
in the models. Training order is a permutation drawn from the loop's torch.Generator (optionally
length-bucketed: `bucket_batches` consecutive batches of the permutation are sorted by length, so
their padding is tight, and then the batch order is shuffled again).

Evaluation: all samples of the split (batches ordered by length for speed; metrics are order-free):
"auc" (all rows), "gauc" (per-user AUC weighted by impressions, users with both classes),
"logloss", "num_samples". Protocol: the build's CTR split (see its manifest / data config).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from recsys.data import layout, schema
from recsys.data.sequences import JaggedSequences
from recsys.tasks.base import Batch

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
DEFAULT_MAX_HISTORY = 2000


@dataclass(frozen=True)
class SplitSamples:
    """The samples of one split, as parallel arrays (row = row in sequences; index = row in ctr_samples)."""

    index: np.ndarray  # [S] int64 row of ctr_samples.parquet
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


def read_ctr_samples(build_dir: Path, seqs: JaggedSequences, num_items: int | None = None) -> dict[str, SplitSamples]:
    """The build's ctr_samples parts -> per-split arrays; every bad row is an error naming the column."""
    path = build_dir / layout.CTR_SAMPLES
    if not path.is_dir():
        raise FileNotFoundError(f"CTR samples not found: {path} (build the dataset with CTR samples first)")
    table = layout.read_table(build_dir, layout.CTR_SAMPLES)
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
    lookup = seqs.row_of_user()
    known = (users >= 0) & (users < len(lookup))
    rows = np.where(known, lookup[np.where(known, users, 0)], -1)
    if (rows < 0).any():
        raise ValueError(f"{path}: column 'user_id' has {int((rows < 0).sum())} users without a sequence "
                         f"(e.g. {users[rows < 0][:3].tolist()})")
    lengths = seqs.lengths[rows]
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
        model_cfg: Any = None,
        train_cfg: Any = None,
        *,
        max_history: int = DEFAULT_MAX_HISTORY,
        eval_batch_size: int = 512,
        bucket_batches: int = 1,
        rank: int = 0,
        world_size: int = 1,
        sequences: JaggedSequences | None = None,
    ) -> None:
        self.build_dir = Path(build_dir)
        if max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {max_history}")
        if not 0 <= rank < world_size:
            raise ValueError(f"shard: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if eval_batch_size < 1 or bucket_batches < 1:
            raise ValueError("eval_batch_size and bucket_batches must be >= 1")
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        self.max_history, self.eval_batch_size, self.bucket_batches = max_history, eval_batch_size, bucket_batches
        self.seqs = sequences if sequences is not None else JaggedSequences.read(self.build_dir)
        items_vocab = self.build_dir / schema.VOCAB_DIR / schema.ITEMS_VOCAB
        self.num_items = int(pq.read_metadata(str(items_vocab)).num_rows) if items_vocab.is_file() else None
        self.splits = read_ctr_samples(self.build_dir, self.seqs, self.num_items)
        train = self.splits["train"]
        self.train = train.take(np.arange(rank, len(train), world_size))  # this worker's shard
        self.has_categories = self.seqs.categories is not None
        log.info("CTR task %s: samples train=%d (shard %d/%d: %d) valid=%d test=%d, max_history=%d",
                 self.build_dir, len(train), rank, world_size, len(self.train), len(self.splits["valid"]),
                 len(self.splits["test"]), max_history)

    # --- batches --------------------------------------------------------------------------------
    def num_samples(self) -> dict[str, int]:
        return {name: len(s) for name, s in self.splits.items()}

    def num_train_batches(self, batch_size: int) -> int:
        return math.ceil(len(self.train) / batch_size)

    def make_batch(self, s: SplitSamples) -> Batch:
        """The CTR batch of samples `s` (vectorised window extraction)."""
        lengths = np.minimum(s.prefix, self.max_history)
        width = max(int(lengths.max(initial=0)), 1)
        hist = self.seqs.windows(s.rows, s.prefix, width, align="right_pad")  # [B,L]
        if self.has_categories:
            hist_cats = self.seqs.windows(s.rows, s.prefix, width, values=self.seqs.categories, align="right_pad")
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

    def train_order(self, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
        """Positions in the train shard, one array per batch (all randomness from `generator`)."""
        n = len(self.train)
        perm = torch.randperm(n, generator=generator).numpy()
        batches = [perm[i : i + batch_size] for i in range(0, n, batch_size)]
        if self.bucket_batches > 1:
            lengths = np.minimum(self.train.prefix, self.max_history)
            pooled = []
            span = batch_size * self.bucket_batches
            for i in range(0, n, span):
                block = perm[i : i + span]
                block = block[np.argsort(lengths[block], kind="stable")]
                pooled += [block[j : j + batch_size] for j in range(0, len(block), batch_size)]
            order = torch.randperm(len(pooled), generator=generator).numpy()
            batches = [pooled[k] for k in order]
        return batches

    def train_batches(self, epoch: int, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        for sel in self.train_order(batch_size, generator):
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
        from recsys.ctr_metrics import ctr_metrics

        s = self.splits[split]
        if len(s) == 0:
            raise ValueError(f"split {split!r} has no CTR samples in {self.build_dir}")
        metrics = ctr_metrics(s.user_ids, s.labels, self.predict(model, split))
        return {**{k: float(v) for k, v in metrics.items()}, "num_samples": float(len(s))}
