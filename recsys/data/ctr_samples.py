"""CTR samples that reference a user's sequence by (user_id, prefix_length) instead of copying it.

Target positions per user with T events (0-based indices into `items`; history = items[:index]):
    train: index T-k for k in range(start, stop, step)   (DARE: range(3, 94, 5) -> T-3, T-8, ..., T-93,
           i.e. DARE's 1-based T-2, T-7, ..., T-92)
    valid: index T-2 (the second-to-last event)        [indices T-2m .. T-m-1 with eval_targets = m]
    test:  index T-1 (the last event)                  [indices T-m .. T-1]
each kept only when index >= min_history. Rows are grouped by user (users ascending), then split
(train, valid, test), then index ascending.

Modes:
    popularity_negatives  (DARE protocol) each target is a positive (label 1) followed by
        `negatives_per_positive` negatives (label 0, same prefix) drawn proportionally to global item
        frequency, never an item anywhere in the user's sequence, seeded (recsys/data/negatives.py).
    label_column  each target event is one sample labelled by its own label (e.g. MovieLens
        rating >= 4 = click); no negatives are drawn.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys.data import negatives as neg
from recsys.data import schema

SPLITS = ("train", "valid", "test")


def target_positions(lengths: np.ndarray, start: int, stop: int, step: int, min_history: int,
                     eval_targets: int = 1):
    """(row, split code 0/1/2, index) of every target, grouped by row then split then index."""
    lengths = lengths.astype(np.int64)
    ks = np.arange(start, stop, step, dtype=np.int64)
    n_train = np.searchsorted(ks, lengths - min_history, side="right") if ks.size else np.zeros_like(lengths)
    rows_t = np.repeat(np.arange(lengths.size), n_train)
    first = np.repeat(np.cumsum(n_train) - n_train, n_train)
    j = np.arange(rows_t.size) - first
    idx_t = lengths[rows_t] - ks[n_train[rows_t] - 1 - j] if rows_t.size else np.empty(0, np.int64)
    m = int(eval_targets)
    all_rows = np.repeat(np.arange(lengths.size), m)
    back = np.tile(np.arange(m, 0, -1), lengths.size)  # m, m-1, ..., 1 steps before the split's end
    idx_v_all = lengths[all_rows] - m - back
    idx_s_all = lengths[all_rows] - back
    keep_v = idx_v_all >= max(min_history, 0)
    keep_s = idx_s_all >= max(min_history, 0)
    rows_v, rows_s = all_rows[keep_v], all_rows[keep_s]
    rows = np.concatenate([rows_t, rows_v, rows_s])
    split = np.concatenate([np.zeros(rows_t.size, np.int64), np.ones(rows_v.size, np.int64), np.full(rows_s.size, 2)])
    idx = np.concatenate([idx_t, idx_v_all[keep_v], idx_s_all[keep_s]])
    order = np.lexsort((idx, split, rows))
    return rows[order], split[order], idx[order]


def build_ctr_samples(
    user_ids: np.ndarray,
    offsets: np.ndarray,
    items: np.ndarray,
    *,
    mode: str,
    start: int,
    stop: int,
    step: int,
    min_history: int,
    negatives_per_positive: int,
    seed: int,
    num_items: int,
    popularity: np.ndarray | None = None,  # [N+1] event counts per dense item (0 unused)
    item_category: np.ndarray | None = None,  # [N+1] dense category per dense item
    labels: np.ndarray | None = None,  # [E] int8 per event (label_column mode)
    eval_targets: int = 1,
) -> pl.DataFrame:
    lengths = np.diff(offsets)
    rows, split, idx = target_positions(lengths, start, stop, step, min_history, eval_targets)
    pos_item = items[offsets[rows] + idx]
    if mode == "label_column":
        if labels is None:
            raise ValueError("ctr mode 'label_column' needs a 'label' column in the events (e.g. rating_threshold)")
        s_rows, s_split, s_idx, s_item = rows, split, idx, pos_item
        s_label = labels[offsets[rows] + idx].astype(np.int8)
    elif mode == "popularity_negatives":
        if popularity is None:
            raise ValueError("popularity_negatives needs item popularity")
        k = negatives_per_positive + 1
        s_rows, s_split, s_idx = (np.repeat(a, k) for a in (rows, split, idx))
        s_item = np.repeat(pos_item, k)
        is_neg = np.tile(np.arange(k) > 0, rows.size)
        s_label = (~is_neg).astype(np.int8)
        # slot = index of the sample row within its user's rows (partition independent)
        counts = np.bincount(s_rows, minlength=lengths.size)
        slot = np.arange(s_rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
        users_all = np.repeat(user_ids, lengths)
        hist = neg.history_codes(users_all, items, num_items)
        cdf = np.cumsum(popularity[1:].astype(np.float64))
        nrows = np.flatnonzero(is_neg)
        s_item[nrows] = neg.sample(user_ids[s_rows[nrows]], slot[nrows], hist, num_items, seed, neg.CTR_STREAM, cdf=cdf)
    else:
        raise ValueError(f"unknown ctr mode {mode!r}")
    cols = {
        schema.SPLIT: pl.Series(np.asarray(SPLITS)[s_split], dtype=pl.String),
        schema.USER: pl.Series(user_ids[s_rows].astype(np.int64)),
        schema.PREFIX_LENGTH: pl.Series(s_idx.astype(np.int32)),
        schema.ITEM: pl.Series(s_item.astype(np.int64)),
    }
    if item_category is not None:
        cols[schema.CATEGORY] = pl.Series(item_category[s_item].astype(np.int64))
    cols[schema.LABEL] = pl.Series(s_label.astype(np.int8))
    return pl.DataFrame(cols)
