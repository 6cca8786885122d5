"""The driver of the streaming build (recsys/data/stream_build.py): plans the chunks, runs the three
passes through an executor, merges the O(vocabulary) aggregates, and writes the vocabularies and
the manifest. The manifest is written last, to a temporary name renamed into place, and any
manifest left from an earlier build is deleted first: a crashed build never looks complete.

Partitioning: users are hashed by RAW id (`layout.part_of`), so a chunk knows each event's part
in the read pass, before any vocabulary exists; that is what lets the read pass write its events
straight into per-bucket files (one pass over the input, no shuffle through the driver).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl

from recsys.artifacts import code_version, library_versions, sha256_file
from recsys.config import config_hash
from recsys.data import layout, schema
from recsys.data.build_config import BuildConfig, resolved_source
from recsys.data.chunks import Chunk, line_offsets, plan_chunks
from recsys.data.readers.base import SourceConfig
from recsys.data.stream_build import (
    REJECTS_DIR, TMP_DIR, BucketShared, BucketStats, ChunkResult, Executor, OutputShared, PartResult,
    ScatterShared, LocalExecutor, bucket_outputs, bucket_stats, scatter_chunk,
)
from recsys.data.transform import GlobalStats, length_stats
from recsys.data.validate import REASONS, check_fraction
from recsys.data.vocab import Vocabulary, write_vocabularies

log = logging.getLogger(__name__)
OWNED = (*layout.PER_USER_TABLES, REJECTS_DIR, schema.VOCAB_DIR, TMP_DIR)
OLD_FILES = ("sequences.parquet", "eval_negatives.parquet", "ctr_samples.parquet", "rejects.parquet")


def prepare_output(out: Path) -> None:
    """Delete a previous build's manifest FIRST (so nothing looks complete while we write), then its
    tables; other files in the folder are left alone."""
    out.mkdir(parents=True, exist_ok=True)
    (out / schema.MANIFEST_FILE).unlink(missing_ok=True)
    for name in OWNED:
        if (out / name).exists():
            shutil.rmtree(out / name)
    for name in OLD_FILES:
        (out / name).unlink(missing_ok=True)


def _files_by_bucket(results: list[ChunkResult], tmp: Path, kind: str) -> dict[int, list[Path]]:
    out: dict[int, list[Path]] = {}
    for r in results:
        for b in (r.event_buckets if kind == "events" else r.reject_buckets):
            out.setdefault(b, []).append(tmp / kind / f"b-{b:05d}" / f"c-{r.index:06d}.parquet")
    return out


def merge_items(tmp: Path, num_parts: int, has_cat: bool, batch_rows: int = 4_000_000) -> pl.DataFrame:
    """Merge the buckets' per-item aggregates into one row per item (sorted by raw item id): count
    summed, category of the first event (smallest order). Bounded: partials are folded into the
    running table whenever `batch_rows` rows are pending."""
    aggs = [pl.col("count").sum(), pl.col("first").min()]
    if has_cat:
        aggs.append(pl.col("category").sort_by("first").first())
    running: pl.DataFrame | None = None
    pending: list[pl.DataFrame] = []
    rows = 0
    for b in range(num_parts):
        path = tmp / "items" / f"b-{b:05d}" / "items.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"build intermediate missing (a bucket task did not finish): {path}")
        pending.append(pl.read_parquet(path))
        rows += pending[-1].height
        if rows >= batch_rows or b == num_parts - 1:
            frames = ([running] if running is not None else []) + pending
            running = pl.concat(frames).group_by(schema.ITEM).agg(aggs)
            pending, rows = [], 0
    assert running is not None
    return running.sort(schema.ITEM)


def global_stats(items: pl.DataFrame, bstats: list[BucketStats]) -> GlobalStats:
    """Vocabularies (dense ids by sorted raw id), popularity and item -> category from the aggregates."""
    users = np.sort(np.concatenate([b.users for b in bstats]))
    vocabs = {"users": Vocabulary(users), "items": Vocabulary(items[schema.ITEM].to_numpy())}
    item_category = None
    if "category" in items.columns:
        vocabs["categories"] = Vocabulary(np.unique(np.concatenate([b.categories for b in bstats])))
        item_category = np.zeros(items.height + 1, dtype=np.int64)
        item_category[1:] = vocabs["categories"].encode(items["category"].to_numpy())
    popularity = np.zeros(items.height + 1, dtype=np.int64)
    popularity[1:] = items["count"].to_numpy()
    return GlobalStats(vocabs, popularity, item_category)


def run_build(cfg: BuildConfig, output_dir: str | Path, executor: Executor, engine: str) -> dict:
    """The whole streaming build with `executor`; returns the manifest. On failure the intermediate
    files are removed and no manifest exists (prepare_output deleted any old one first)."""
    out = Path(output_dir)
    source = resolved_source(cfg)
    chunks = plan_chunks(source, cfg.chunk_rows, cfg.chunk_bytes)
    prepare_output(out)
    try:
        return _run_passes(cfg, out, source, chunks, executor, engine)
    except BaseException:
        shutil.rmtree(out / TMP_DIR, ignore_errors=True)
        raise


def _run_passes(cfg: BuildConfig, out: Path, source: SourceConfig, chunks: list[Chunk], executor: Executor,
                engine: str) -> dict:
    """Scatter, bucket statistics, merged vocabularies, per-bucket outputs, manifest."""
    tmp, P = out / TMP_DIR, cfg.num_buckets
    t0 = time.perf_counter()
    cres = sorted(executor.map(scatter_chunk, chunks, ScatterShared(source, tmp, P)), key=lambda r: r.index)
    if [r.index for r in cres] != [c.index for c in chunks]:
        raise RuntimeError(f"scatter pass returned {len(cres)} of {len(chunks)} chunks")
    read = sum(r.read for r in cres)
    if read == 0:
        raise ValueError(f"{source.path}: no input rows")
    ev_schema = next((r.event_schema for r in cres if r.event_schema), None)
    if ev_schema is None:
        counts = {k: sum(r.reasons.get(k, 0) for r in cres) for k in REASONS}
        raise ValueError(f"{source.path}: every one of the {read} input rows was rejected "
                         f"({', '.join(f'{k}={v}' for k, v in counts.items() if v)})")
    log.info("scatter: %d chunks, %d rows read in %.1fs", len(chunks), read, time.perf_counter() - t0)
    offsets = np.asarray(line_offsets(chunks, {r.index: r.covered for r in cres}), dtype=np.int64)
    bsh = BucketShared(tmp, out, _files_by_bucket(cres, tmp, "events"), _files_by_bucket(cres, tmp, "rejects"),
                       [c.file for c in chunks], offsets, ev_schema)
    bstats = sorted(executor.map(bucket_stats, list(range(P)), bsh), key=lambda r: r.bucket)
    reasons = {r: sum(b.reasons[r] for b in bstats) for r in REASONS}
    check_fraction(read, reasons, cfg.max_reject_fraction, source.path)
    items = merge_items(tmp, P, schema.CATEGORY in ev_schema)
    stats = global_stats(items, bstats)
    del items
    log.info("statistics: %s in %.1fs", {k: len(v) for k, v in stats.vocabs.items()}, time.perf_counter() - t0)
    osh = OutputShared(cfg, stats, out, bsh.event_files, ev_schema)
    parts = sorted(executor.map(bucket_outputs, list(range(P)), osh), key=lambda r: r.bucket)
    shutil.rmtree(tmp)
    return write_build_manifest(out, cfg, engine, stats, bstats, parts, read, reasons)


def build_polars(cfg: BuildConfig, output_dir: str | Path) -> dict:
    """The single-process reference: the same passes, one unit after another in this process."""
    return run_build(cfg, output_dir, LocalExecutor(), engine="polars")


def _check_complete(out: Path, num_parts: int, files: dict[str, str]) -> None:
    """Every part of every table and of the rejects exists and was reported by its task."""
    for table in (*layout.PER_USER_TABLES, REJECTS_DIR):
        for p in range(num_parts):
            rel = f"{table}/{layout.part_name(p)}"
            if rel not in files or not (out / rel).is_file():
                raise FileNotFoundError(f"{out}: build incomplete, missing {rel}; no manifest written")


def write_build_manifest(out: Path, cfg: BuildConfig, engine: str, stats: GlobalStats, bstats: list[BucketStats],
                         parts: list[PartResult], read: int, reasons: dict[str, int]) -> dict:
    """Vocabularies, then the manifest from the aggregates (atomically, last)."""
    write_vocabularies(stats.vocabs, out)
    files = {rel: sha for b in bstats for rel, sha in [b.reject_file]}
    for p in parts:
        files.update(p.files)
    _check_complete(out, cfg.num_buckets, files)
    for name in sorted((out / schema.VOCAB_DIR).iterdir()):
        files[f"{schema.VOCAB_DIR}/{name.name}"] = sha256_file(name)
    kept, rejected = sum(p.kept for p in parts), sum(reasons.values())
    if read != kept + rejected:
        raise RuntimeError(f"row accounting broken: read {read} != kept {kept} + rejected {rejected}")
    by_split: dict[str, int] = {}
    for p in parts:
        for s, n in p.ctr_by_split.items():
            by_split[s] = by_split.get(s, 0) + n
    lengths = np.concatenate([p.lengths for p in parts])
    users = sum(p.users for p in parts)
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "code_version": code_version(), "versions": library_versions(), "versions_data": library_versions(),
        "files": dict(sorted(files.items())),
        "name": cfg.name, "engine": engine, "seed": cfg.seed, "config_hash": config_hash(cfg),
        "config": cfg.model_dump(mode="json"), "source": resolved_source(cfg).path,
        "counts": {"read": read, "kept": kept, "rejected": rejected, "rejects_by_reason": reasons,
                   "sequences": users, "eval_negatives": users, "ctr_samples": sum(by_split.values()),
                   "ctr_samples_by_split": dict(sorted(by_split.items())),
                   "ctr_positive_labels": sum(p.ctr_positives for p in parts)},
        "vocab_sizes": {k: len(v) for k, v in stats.vocabs.items()},
        "length_stats": length_stats(lengths),
        "layout": {"num_parts": cfg.num_buckets, "tables": list(layout.PER_USER_TABLES), "rejects": REJECTS_DIR,
                   "partition": "splitmix64(raw user_id) % num_parts; rows sorted by dense user_id"},
    }
    tmp = out / f".{schema.MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, out / schema.MANIFEST_FILE)
    return manifest
