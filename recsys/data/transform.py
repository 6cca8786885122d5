"""The build's per-user transformation steps (polars), shared by both engines of the streaming build.

    events (validated, raw ids) -> vocabularies (dense 1..N by sorted raw id)
      -> encode -> per-user sequences (stable sort on (user, timestamp, input order))
      -> eval_negatives (uniform, never in the user's sequence) and ctr_samples

Per-user results depend only on the user's own events and on the global statistics in
`GlobalStats` (vocabularies, item popularity, item -> category), so running them per user bucket
(recsys/data/stream_build.py) gives the same rows as running them on all users at once
(`transform`, the in-memory form kept for tests and small inputs).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys.data import schema
from recsys.data.build_config import BuildConfig
from recsys.data.ctr_samples import build_ctr_samples
from recsys.data.negatives import eval_negatives
from recsys.data.vocab import Vocabulary

log = logging.getLogger(__name__)
ORDER = "order"  # input order of an event (ties in time keep it)


@dataclass
class GlobalStats:
    """What per-user steps need to know about all users."""

    vocabs: dict[str, Vocabulary]
    popularity: np.ndarray  # [N+1] event count per dense item
    item_category: np.ndarray | None  # [N+1] dense category of each item's first event (input order)

    @property
    def num_items(self) -> int:
        return len(self.vocabs["items"])


@dataclass
class BuildTables:
    sequences: pl.DataFrame
    eval_negatives: pl.DataFrame
    ctr_samples: pl.DataFrame


def fit_vocabularies(users: np.ndarray, items: np.ndarray, categories: np.ndarray | None) -> dict[str, Vocabulary]:
    vocabs = {"users": Vocabulary.fit(users), "items": Vocabulary.fit(items)}
    if categories is not None:
        vocabs["categories"] = Vocabulary.fit(categories)
    return vocabs


def encode(events: pl.DataFrame, vocabs: dict[str, Vocabulary]) -> pl.DataFrame:
    """Raw ids -> dense ids (every id is in the vocabulary: it was fit on these events)."""
    cols = [pl.Series(schema.USER, vocabs["users"].encode(events[schema.USER].to_numpy())),
            pl.Series(schema.ITEM, vocabs["items"].encode(events[schema.ITEM].to_numpy()))]
    if "categories" in vocabs:
        cols.append(pl.Series(schema.CATEGORY, vocabs["categories"].encode(events[schema.CATEGORY].to_numpy())))
    return events.with_columns(cols)


def item_first_category(encoded: pl.DataFrame, num_items: int) -> np.ndarray | None:
    """[N+1] dense category of each item's first event in input order (0 for padding)."""
    if schema.CATEGORY not in encoded.columns:
        return None
    first = encoded.group_by(schema.ITEM).agg(pl.col(schema.CATEGORY).sort_by(ORDER).first())
    out = np.zeros(num_items + 1, dtype=np.int64)
    out[first[schema.ITEM].to_numpy()] = first[schema.CATEGORY].to_numpy()
    return out


def group_sequences(encoded: pl.DataFrame) -> pl.DataFrame:
    """One row per user (ascending dense id): time-ordered list columns; ties keep input order."""
    lists = [pl.col(schema.ITEM).alias(schema.SEQ_ITEMS), pl.col(schema.TIME).alias(schema.SEQ_TIMES)]
    if schema.CATEGORY in encoded.columns:
        lists.append(pl.col(schema.CATEGORY).alias(schema.SEQ_CATEGORIES))
    if schema.EVENT_TYPE in encoded.columns:
        lists.append(pl.col(schema.EVENT_TYPE).alias(schema.SEQ_EVENT_TYPES))
    if schema.LABEL in encoded.columns:
        lists.append(pl.col(schema.LABEL).alias("labels"))
    return (
        encoded.sort([schema.USER, schema.TIME, ORDER])
        .group_by(schema.USER, maintain_order=True)
        .agg(lists)
    )


def _jagged(sequences: pl.DataFrame, col: str) -> tuple[np.ndarray, np.ndarray]:
    s = sequences[col]
    lengths = s.list.len().to_numpy().astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return s.explode().to_numpy(), offsets


def user_outputs(sequences: pl.DataFrame, cfg: BuildConfig, stats: GlobalStats) -> tuple[pl.DataFrame, pl.DataFrame]:
    """eval_negatives and ctr_samples of the users in `sequences` (any subset of users)."""
    user_ids = sequences[schema.USER].to_numpy().astype(np.int64)
    items, offsets = _jagged(sequences, schema.SEQ_ITEMS)
    items = items.astype(np.int64)
    negs = eval_negatives(user_ids, offsets, items, stats.num_items, cfg.num_eval_negatives, cfg.seed)
    ev = pl.DataFrame({schema.USER: user_ids, schema.NEGATIVES: negs}).with_columns(
        pl.col(schema.NEGATIVES).arr.to_list()
    )
    if cfg.ctr.mode == "none":
        return ev, empty_ctr(stats)
    labels = _jagged(sequences, "labels")[0] if "labels" in sequences.columns else None
    ctr = build_ctr_samples(
        user_ids, offsets, items, mode=cfg.ctr.mode, start=cfg.ctr.start, stop=cfg.ctr.stop, step=cfg.ctr.step,
        min_history=cfg.ctr.min_history, negatives_per_positive=cfg.ctr.negatives_per_positive, seed=cfg.seed,
        num_items=stats.num_items, popularity=stats.popularity, item_category=stats.item_category, labels=labels,
        eval_targets=cfg.ctr.eval_targets,
    )
    return ev, ctr


def empty_ctr(stats: GlobalStats) -> pl.DataFrame:
    cols = {schema.SPLIT: pl.String, schema.USER: pl.Int64, schema.PREFIX_LENGTH: pl.Int32, schema.ITEM: pl.Int64}
    if stats.item_category is not None:
        cols[schema.CATEGORY] = pl.Int64
    cols[schema.LABEL] = pl.Int8
    return pl.DataFrame(schema=cols)


def global_stats(encoded: pl.DataFrame, vocabs: dict[str, Vocabulary]) -> GlobalStats:
    n = len(vocabs["items"])
    pop = np.bincount(encoded[schema.ITEM].to_numpy(), minlength=n + 1).astype(np.int64)
    return GlobalStats(vocabs, pop, item_first_category(encoded, n))


def transform(events: pl.DataFrame, cfg: BuildConfig) -> tuple[BuildTables, GlobalStats]:
    """The reference transformation of validated events (raw ids) into the build tables."""
    cats = events[schema.CATEGORY].to_numpy() if schema.CATEGORY in events.columns else None
    vocabs = fit_vocabularies(events[schema.USER].to_numpy(), events[schema.ITEM].to_numpy(), cats)
    encoded = encode(events, vocabs)
    stats = global_stats(encoded, vocabs)
    sequences = group_sequences(encoded)
    ev, ctr = user_outputs(sequences, cfg, stats)
    return BuildTables(sequences, ev, ctr), stats


# ---------------------------------------------------------------- writing


def length_stats(lengths: np.ndarray) -> dict[str, float]:
    """Summary of per-user sequence lengths (for the manifest)."""
    lengths = np.asarray(lengths)
    if lengths.size == 0:
        return {"mean": 0.0, "median": 0.0, "p90": 0.0, "max": 0}
    return {
        "mean": round(float(lengths.mean()), 4),
        "median": float(np.median(lengths)),
        "p90": float(np.percentile(lengths, 90)),
        "max": int(lengths.max()),
        "min": int(lengths.min()),
    }


def manifest_summary(manifest: dict) -> str:
    keep = {k: manifest[k] for k in ("name", "engine", "counts", "vocab_sizes", "length_stats", "config_hash")}
    return json.dumps(keep, indent=2)
