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
    """(values, offsets) of a list column; a one-chunk column's values are not copied."""
    arr = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
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
            items=items.astype(np.int64, copy=False),
            times=None if times is None else times.astype(np.int64, copy=False),
            categories=None if cats is None else cats.astype(np.int64, copy=False),
        )

    @classmethod
    def read(cls, build_dir: str | Path, parts: list[int] | None = None,
             columns: tuple[str, ...] | None = None) -> "JaggedSequences":
        """The sequences of `parts` of a build (default: all), in dense user order (the order of
        `layout.read_table`), with the list `columns` asked for (default: all; items always).
        Memory: each part is converted on its own (its Arrow buffers become the arrays, no copy)
        and the parts are concatenated once, so the peak is about twice the result, not the
        whole Arrow table plus its copies."""
        pieces = []
        for _, table in layout.iter_parts(build_dir, layout.SEQUENCES, parts):
            keep = [c for c in table.column_names if c in (schema.USER, schema.SEQ_ITEMS)
                    or columns is None or c in columns]
            pieces.append(cls.from_table(table.select(keep)))
            del table
        return cls.concat(pieces)

    @classmethod
    def concat(cls, pieces: list["JaggedSequences"]) -> "JaggedSequences":
        """Rows of `pieces` one after the other, then stably sorted by user when they are not
        already in user order (hash parts interleave users; each user has one row). Empties the
        list `pieces`, so the per-part arrays are freed before the sort."""
        if not pieces:
            raise ValueError("no sequence parts to concatenate")
        shifts = np.cumsum([0] + [p.items.size for p in pieces[:-1]])
        offsets = np.concatenate([pieces[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(pieces, shifts)])
        users = np.concatenate([p.user_ids for p in pieces])
        fields = {"times": None, "categories": None}
        for name in fields:
            if all(getattr(p, name) is not None for p in pieces):
                fields[name] = np.concatenate([getattr(p, name) for p in pieces])
        out = cls(users, offsets, np.concatenate([p.items for p in pieces]), **fields)
        pieces.clear()
        if users.size > 1 and (np.diff(users) < 0).any():
            out = out.take(np.argsort(users, kind="stable"))
        return out

    def take(self, rows: np.ndarray) -> "JaggedSequences":
        """The sequences of `rows`, in that order (vectorised jagged gather)."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        offsets = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        index = np.repeat(self.offsets[rows] - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return JaggedSequences(self.user_ids[rows], offsets, self.items[index], pick(self.times),
                               pick(self.categories))

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
