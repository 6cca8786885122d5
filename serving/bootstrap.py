"""Bootstrap the user store from a build's `sequences/` parts (dense ids decoded back to raw ids
with the build's vocabularies, so the store holds the same raw ids that /v1/events receives).
Users that already have events are left alone, so a restart never duplicates history.

Memory stays bounded: one record batch of one part is decoded at a time, whatever the build size."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from recsys.data import layout, schema
from recsys.data.vocab import load_vocabularies
from serving.store.base import NO_CATEGORY, UserStore

log = logging.getLogger(__name__)


def bootstrap_store(store: UserStore, build_dir: str | Path, batch_rows: int = 4096, progress: bool = True) -> int:
    """Load every user of the build's sequences that has no events yet; returns how many.
    `progress` shows a progress bar over the build's users (tqdm, on stderr, when it is a terminal)."""
    build_dir = Path(build_dir)
    if not (build_dir / schema.MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"bootstrap: {build_dir} has no {schema.MANIFEST_FILE} (expected a finished build directory)")
    files = layout.table_files(build_dir, layout.SEQUENCES)
    vocabs = load_vocabularies(build_dir)
    names = pq.read_schema(str(files[0])).names
    for col in (schema.USER, schema.SEQ_ITEMS, schema.SEQ_TIMES):
        if col not in names:
            raise ValueError(f"bootstrap: {files[0]} lacks column {col!r}")
    has_cats = schema.SEQ_CATEGORIES in names and "categories" in vocabs
    cols = [schema.USER, schema.SEQ_ITEMS, schema.SEQ_TIMES] + ([schema.SEQ_CATEGORIES] if has_cats else [])
    total = sum(pq.read_metadata(str(f)).num_rows for f in files)
    loaded = 0
    with tqdm(total=total, unit="user", desc="bootstrap", disable=None if progress else True) as bar:
        for path in files:
            for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=batch_rows, columns=cols):
                loaded += _load_batch(store, batch, vocabs, has_cats)
                bar.update(batch.num_rows)
    log.info("bootstrap: %d users loaded from %s (%d parts)", loaded, build_dir, len(files))
    return loaded


def _load_batch(store: UserStore, batch, vocabs: dict, has_cats: bool) -> int:
    """Decode one record batch of user rows to raw ids and bulk-load the users with no events yet."""
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
    loaded = 0
    for k, user in enumerate(users.tolist()):
        lo, hi = int(offsets[k]), int(offsets[k + 1])
        if store.bulk_load(int(user), flat_items[lo:hi], flat_cats[lo:hi], flat_times[lo:hi]):
            loaded += 1
    return loaded
