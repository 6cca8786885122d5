"""Vocabularies: raw int64 ids -> dense ids 1..N (0 = padding / out of vocabulary).

Dense ids are assigned by sorted raw id, so the same set of raw ids always gives the same
mapping whatever the input order or the number of workers that saw them. Persisted as parquet
(columns raw_id, id) under `<build>/vocab/`, next to every model trained on the build, so serving
maps raw ids exactly as training did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data import schema

VOCAB_NAMES = {"users": schema.USERS_VOCAB, "items": schema.ITEMS_VOCAB, "categories": schema.CATEGORIES_VOCAB}


class Vocabulary:
    """A sorted array of raw ids; the dense id of raw_ids[k] is k + 1."""

    def __init__(self, raw_ids: np.ndarray) -> None:
        raw = np.asarray(raw_ids, dtype=np.int64)
        if raw.ndim != 1:
            raise ValueError(f"raw ids must be 1-d, got shape {raw.shape}")
        if raw.size > 1 and not np.all(raw[1:] > raw[:-1]):
            raise ValueError("raw ids must be strictly increasing (use Vocabulary.fit for unsorted input)")
        self.raw_ids = raw

    @classmethod
    def fit(cls, raw_ids: np.ndarray | list[int]) -> "Vocabulary":
        return cls(np.unique(np.asarray(raw_ids, dtype=np.int64)))

    def __len__(self) -> int:
        return int(self.raw_ids.size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and np.array_equal(self.raw_ids, other.raw_ids)

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)})"

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """Dense ids (1..N) of raw ids; 0 for ids not in the vocabulary."""
        raw = np.asarray(raw, dtype=np.int64)
        if self.raw_ids.size == 0:
            return np.zeros(raw.shape, dtype=np.int64)
        pos = np.searchsorted(self.raw_ids, raw)
        clipped = np.minimum(pos, self.raw_ids.size - 1)
        found = self.raw_ids[clipped] == raw
        return np.where(found, clipped + 1, 0).astype(np.int64)

    def decode(self, dense: np.ndarray) -> np.ndarray:
        """Raw ids of dense ids; raises on 0 (padding) or ids out of range."""
        dense = np.asarray(dense, dtype=np.int64)
        if dense.size and (dense.min() < 1 or dense.max() > len(self)):
            raise ValueError(f"dense ids must be in 1..{len(self)}, got range [{dense.min()}, {dense.max()}]")
        return self.raw_ids[dense - 1]

    def to_arrow(self) -> pa.Table:
        ids = np.arange(1, len(self) + 1, dtype=np.int64)
        return pa.Table.from_arrays([pa.array(self.raw_ids), pa.array(ids)], schema=schema.VOCAB_SCHEMA)

    def write(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.to_arrow(), str(path))

    @classmethod
    def read(cls, path: str | Path) -> "Vocabulary":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        table = pq.read_table(str(path))
        for col in ("raw_id", "id"):
            if col not in table.column_names:
                raise ValueError(f"{path}: missing column {col!r}")
        raw = table["raw_id"].to_numpy().astype(np.int64)
        ids = table["id"].to_numpy().astype(np.int64)
        order = np.argsort(ids, kind="stable")
        if not np.array_equal(ids[order], np.arange(1, len(ids) + 1)):
            raise ValueError(f"{path}: column 'id' must be exactly 1..{len(ids)}")
        return cls(raw[order])


def write_vocabularies(vocabs: dict[str, Vocabulary], directory: str | Path) -> None:
    """Write `vocabs` (keys users/items/categories) under `<directory>/vocab/`."""
    for key, vocab in vocabs.items():
        vocab.write(Path(directory) / schema.VOCAB_DIR / VOCAB_NAMES[key])


def load_vocabularies(directory: str | Path) -> dict[str, Vocabulary]:
    """Vocabularies of a build (or model) directory: keys users, items and categories (if present).
    `directory` may be the build directory or its `vocab/` folder."""
    directory = Path(directory)
    vdir = directory / schema.VOCAB_DIR if (directory / schema.VOCAB_DIR).is_dir() else directory
    out: dict[str, Vocabulary] = {}
    for key, name in VOCAB_NAMES.items():
        if (vdir / name).is_file():
            out[key] = Vocabulary.read(vdir / name)
    for key in ("users", "items"):
        if key not in out:
            raise FileNotFoundError(f"{vdir}: missing vocabulary {VOCAB_NAMES[key]}")
    return out


def vocabulary_size(build_dir: str | Path, name: str, *, required: bool = True) -> int:
    """Dense ids in a build's `name` vocabulary ("users", "items", "categories"), read from the
    parquet footer alone. A missing file is an error naming it, or 0 with `required=False` (builds
    without categories)."""
    path = Path(build_dir) / schema.VOCAB_DIR / VOCAB_NAMES[name]
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{name} vocabulary not found: {path} (is {build_dir} a build directory?)")
        return 0
    return int(pq.read_metadata(str(path)).num_rows)
