"""Bootstrap the user store from a build's sequences.parquet (dense ids decoded back to raw ids
with the build's vocabularies, so the store holds the same raw ids that /v1/events receives).
Users that already have events are left alone, so a restart never duplicates history."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recsys.data import schema
from recsys.data.vocab import load_vocabularies
from serving.store.base import NO_CATEGORY, UserStore

log = logging.getLogger(__name__)


def bootstrap_store(store: UserStore, build_dir: str | Path, batch_rows: int = 4096) -> int:
    """Load every user of `build_dir`/sequences.parquet that has no events yet; returns how many."""
    build_dir = Path(build_dir)
    path = build_dir / schema.SEQUENCES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"bootstrap: {path} not found (expected a build directory)")
    vocabs = load_vocabularies(build_dir)
    names = pq.read_schema(str(path)).names
    for col in (schema.USER, schema.SEQ_ITEMS, schema.SEQ_TIMES):
        if col not in names:
            raise ValueError(f"bootstrap: {path} lacks column {col!r}")
    has_cats = schema.SEQ_CATEGORIES in names and "categories" in vocabs
    cols = [schema.USER, schema.SEQ_ITEMS, schema.SEQ_TIMES] + ([schema.SEQ_CATEGORIES] if has_cats else [])
    loaded = 0
    for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=batch_rows, columns=cols):
        users = vocabs["users"].decode(batch.column(schema.USER).to_numpy())
        items, times = batch.column(schema.SEQ_ITEMS), batch.column(schema.SEQ_TIMES)
        offsets = items.offsets.to_numpy()
        flat_items = vocabs["items"].decode(items.values.to_numpy())
        flat_times = times.values.to_numpy().astype(np.int64)
        if has_cats:
            dense_c = batch.column(schema.SEQ_CATEGORIES).values.to_numpy()
            flat_cats = np.full(dense_c.shape, NO_CATEGORY, dtype=np.int64)
            ok = dense_c > 0
            flat_cats[ok] = vocabs["categories"].decode(dense_c[ok])
        else:
            flat_cats = np.full(flat_items.shape, NO_CATEGORY, dtype=np.int64)
        for k, user in enumerate(users.tolist()):
            lo, hi = int(offsets[k]), int(offsets[k + 1])
            if store.bulk_load(int(user), flat_items[lo:hi], flat_cats[lo:hi], flat_times[lo:hi]):
                loaded += 1
    log.info("bootstrap: %d users loaded from %s", loaded, path)
    return loaded
