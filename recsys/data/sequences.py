"""Jagged per-user sequences in memory (values + offsets, as Arrow stores them) and vectorised
window extraction: the batches of every model are built from here without per-sample loops."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data import layout, schema


def _jagged(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    arr = column.combine_chunks()
    if isinstance(arr, pa.ChunkedArray):  # pragma: no cover - pyarrow version differences
        arr = arr.chunk(0)
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False)
    base = offsets[0]
    return values[base : offsets[-1]], offsets - base


@dataclass(frozen=True)
class JaggedSequences:
    """All users' time-ordered sequences. Row r belongs to dense user `user_ids[r]`;
    its items are `items[offsets[r]:offsets[r+1]]`."""

    user_ids: np.ndarray  # [U] int64
    offsets: np.ndarray  # [U+1] int64
    items: np.ndarray  # [E] int64
    times: np.ndarray | None = None  # [E] int64
    categories: np.ndarray | None = None  # [E] int64

    @property
    def num_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row_of_user(self) -> np.ndarray:
        """Array mapping dense user id -> row (or -1)."""
        lookup = np.full(int(self.user_ids.max(initial=0)) + 1, -1, dtype=np.int64)
        lookup[self.user_ids] = np.arange(self.num_users)
        return lookup

    def user_items(self, row: int) -> np.ndarray:
        return self.items[self.offsets[row] : self.offsets[row + 1]]

    @classmethod
    def from_table(cls, table: pa.Table) -> "JaggedSequences":
        items, offsets = _jagged(table[schema.SEQ_ITEMS])
        times = cats = None
        if schema.SEQ_TIMES in table.column_names:
            times, _ = _jagged(table[schema.SEQ_TIMES])
        if schema.SEQ_CATEGORIES in table.column_names:
            cats, _ = _jagged(table[schema.SEQ_CATEGORIES])
        return cls(
            user_ids=table[schema.USER].to_numpy().astype(np.int64),
            offsets=offsets,
            items=items.astype(np.int64),
            times=None if times is None else times.astype(np.int64),
            categories=None if cats is None else cats.astype(np.int64),
        )

    @classmethod
    def read(cls, build_dir: str | Path, parts: list[int] | None = None) -> "JaggedSequences":
        """The sequences of `parts` of a build (default: all), in dense user order."""
        return cls.from_table(layout.read_table(build_dir, layout.SEQUENCES, parts))

    def windows(
        self,
        rows: np.ndarray,
        ends: np.ndarray,
        max_len: int,
        values: np.ndarray | None = None,
        align: str = "left_pad",
    ) -> np.ndarray:
        """For each (row, end): the last `max_len` values before position `end` (exclusive) of that
        row's sequence, as a [B, max_len] array padded with 0. Vectorised, no per-row loop.

        align="left_pad": right-aligned, padding on the left (next-item models: the most recent
        item is always at index max_len-1). align="right_pad": time-ordered from index 0, padding on
        the right (CTR histories: valid positions are [0, length))."""
        values = self.items if values is None else values
        rows = np.asarray(rows, dtype=np.int64)
        ends = np.asarray(ends, dtype=np.int64)
        ar = np.arange(max_len, dtype=np.int64)[None, :]
        if align == "left_pad":
            pos = ends[:, None] - max_len + ar  # [B, n]
            valid = pos >= 0
        elif align == "right_pad":
            start = np.maximum(ends - max_len, 0)
            pos = start[:, None] + ar
            valid = pos < ends[:, None]
        else:
            raise ValueError(f"align must be 'left_pad' or 'right_pad', got {align!r}")
        flat = self.offsets[rows][:, None] + np.where(valid, pos, 0)
        out = np.where(valid, values[np.minimum(flat, max(len(values) - 1, 0))], 0)
        return out.astype(values.dtype, copy=False)
