"""`recsys data build CONFIG`: the Ray Data pipeline that builds per-user sequences and samples.

Steps (each per-user result is computed by the same functions as the single-process polars
reference in recsys/data/transform.py, so both give identical tables; a test asserts it):

1. read + validate in the driver with the readers of recsys/data/readers (text formats need the
   source line numbers for rejects).
2. global statistics in the driver, vectorised: vocabularies (dense ids by sorted raw id), item
   popularity, item -> category of its first event. Small outputs; shipped to workers by ray.put.
3. bucket users by hash: `bucket = splitmix64(dense user) % num_buckets`, and hand Ray one block
   per bucket, put into the object store one bucket at a time (stable argsort by bucket + one
   gather per bucket, so the driver never holds a second full copy); the driver then drops its
   events (it keeps only the counts for the manifest) and `ray.data.from_arrow_refs` reads the blocks.
4. `map_batches(batch_size=None)` = one call per bucket block: encode raw -> dense ids, polars
   stable sort on (user, timestamp, input order) + per-user list aggregation, then that bucket's
   eval negatives and CTR samples (random draws are counter-based hashes of (seed, user, slot),
   recsys/data/negatives.py, so they do not depend on the bucket), packed into the user rows.
5. the driver collects the packed rows, sorts by user (stable), unpacks the three tables and
   writes the same parquet files + manifest as the polars path (a user found in two blocks is an
   error, never a silent merge).

Why not Ray's groupby: it is sort-based with one group per key; grouping by user makes one tiny
Python call per user, and its range partitioning skews on heavy users (a 10k-event user lands in
one partition with its neighbours). `groupby(bucket).map_groups` was the first version; measured on
the Taobao sample on this 2-core machine it took 10-12 s for the shuffle alone versus < 1 s (warm)
for per-bucket blocks, because the shuffle re-reads and re-sorts every event. Hashed buckets give
balanced groups (a heavy user only adds to its own bucket) that polars groups in native code.
The cost: the driver holds the events once until they are in the object store (it reads them
anyway in step 1); a cluster build of data larger than driver memory would read per-file blocks
and shuffle by bucket instead. Memory (benchmarks/pipeline.py, working set = peak - idle PSS of
the whole process tree): the peak is in the shared read + validate step, not in the Ray part.

Local Ray when no address is given (`ray.init(num_cpus=2, include_dashboard=False)`); the same code
runs on a cluster with `--ray-address`. Ray Data shows its progress bars for the long steps.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from recsys.config import ConfigError
from recsys.data import schema
from recsys.data.build_config import BuildConfig, load_build_config, resolve_path, resolved_source
from recsys.data.negatives import splitmix64
from recsys.data.readers import read_events
from recsys.data.validate import Validated
from recsys.data.transform import (
    ORDER,
    BuildTables,
    GlobalStats,
    build_polars,
    empty_ctr,
    encode,
    fit_vocabularies,
    group_sequences,
    manifest_summary,
    user_outputs,
    write_build,
)

log = logging.getLogger(__name__)
BUCKET = "_bucket"
CTR_COL = "_ctr"


def init_ray(address: str | None = None, num_cpus: int = 2) -> None:
    """Connect to `address`, or start a small local Ray without the dashboard (reuses a running one)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)


def bucket_of(users: np.ndarray, num_buckets: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (splitmix64(users.astype(np.uint64)) % np.uint64(num_buckets)).astype(np.int64)


def build_ray(cfg: BuildConfig, output_dir: str | Path, address: str | None = None) -> dict:
    """Run the build on Ray Data; returns the manifest (same files as the polars path)."""
    import ray

    init_ray(address)
    t0 = time.perf_counter()
    validated = read_events(resolved_source(cfg), cfg.max_reject_fraction)
    log.info("read %d rows: kept %d, rejected %d %s", validated.read, validated.kept, validated.rejected,
             {k: v for k, v in validated.counts.items() if v})
    # hand the events over (the driver keeps only the counts): the pipeline frees them once the
    # buckets are in the object store, instead of holding them until the outputs are written
    holder = [validated.events]
    validated = _CountsOnly(events=validated.events.clear(), rejects=validated.rejects, read=validated.read,
                            counts=validated.counts, kept_rows=validated.kept)
    tables, stats = _transform_owned(holder, cfg)
    manifest = write_build(Path(output_dir), tables, stats, validated, cfg, engine="ray")
    log.info("ray build done in %.1fs", time.perf_counter() - t0)
    return manifest


@dataclass
class _CountsOnly(Validated):
    """A Validated whose events were handed to the pipeline: keeps the kept-row count for the manifest."""

    kept_rows: int = 0

    @property
    def kept(self) -> int:
        return self.kept_rows


def transform_ray(events: pl.DataFrame, cfg: BuildConfig) -> tuple[BuildTables, GlobalStats]:
    """The transformation of recsys.data.transform.transform, distributed with Ray Data."""
    return _transform_owned([events], cfg)


def _put_buckets(events: pl.DataFrame, dense_users: np.ndarray, num_buckets: int) -> list:
    """One object-store block per user bucket (events in input order), built one bucket at a time
    (a stable argsort by bucket + one gather per bucket) so the driver never holds a second copy
    of all events; only the columns the per-bucket step reads travel."""
    import ray

    cols = [c for c in events.columns if c != "line"]
    bucket = bucket_of(dense_users, num_buckets)
    perm = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[perm], np.arange(num_buckets + 1))
    del bucket
    refs = []
    for b in range(num_buckets):
        if bounds[b + 1] > bounds[b]:
            refs.append(ray.put(events.select(cols)[perm[bounds[b]:bounds[b + 1]]].to_arrow()))
    return refs


def _transform_owned(holder: list, cfg: BuildConfig) -> tuple[BuildTables, GlobalStats]:
    """transform_ray on `holder[0]`, which it takes out of the list so it can free the events early."""
    import ray

    events: pl.DataFrame = holder.pop()

    # 2. global statistics: vocabularies, popularity, item -> category (small outputs, one pass)
    cats = events[schema.CATEGORY].to_numpy() if schema.CATEGORY in events.columns else None
    vocabs = fit_vocabularies(events[schema.USER].to_numpy(), events[schema.ITEM].to_numpy(), cats)
    n = len(vocabs["items"])
    dense_items = vocabs["items"].encode(events[schema.ITEM].to_numpy())
    popularity = np.bincount(dense_items, minlength=n + 1).astype(np.int64)
    item_category = None
    if cats is not None:
        first = pl.DataFrame({"i": dense_items, "c": cats, "o": events[ORDER].to_numpy()}).group_by("i").agg(
            pl.col("c").sort_by("o").first())
        item_category = np.zeros(n + 1, dtype=np.int64)
        item_category[first["i"].to_numpy()] = vocabs["categories"].encode(first["c"].to_numpy())
    stats = GlobalStats(vocabs, popularity, item_category)
    stats_ref = ray.put(stats)
    num_buckets = cfg.num_buckets

    # 3. encode + bucket, per block
    def encode_block(batch: pa.Table) -> pa.Table:
        st = ray.get(stats_ref) if isinstance(stats_ref, ray.ObjectRef) else stats_ref
        df = encode(pl.from_arrow(batch), st.vocabs)
        return df.with_columns(pl.Series(BUCKET, bucket_of(df[schema.USER].to_numpy(), num_buckets))).to_arrow()

    # 4.+5. group each bucket locally with polars, then its users' negatives and CTR samples,
    # packed into the sequence rows (one output table per bucket, one Ray execution)
    def bucket_outputs(batch: pa.Table) -> pa.Table:
        st = ray.get(stats_ref) if isinstance(stats_ref, ray.ObjectRef) else stats_ref
        seqs = group_sequences(pl.from_arrow(batch).drop(BUCKET))
        ev, ctr = user_outputs(seqs, cfg, st)
        packed = ctr.group_by(schema.USER, maintain_order=True).agg(pl.struct(pl.exclude(schema.USER)).alias(CTR_COL))
        out = seqs.with_columns(ev[schema.NEGATIVES]).join(packed, on=schema.USER, how="left", maintain_order="left")
        return out.to_arrow()

    # bucket in the driver (one cheap vectorised pass) so that each Ray block is exactly one bucket:
    # map_batches(batch_size=None) then sees every event of its users and groups them locally.
    del dense_items, cats
    refs = _put_buckets(events, vocabs["users"].encode(events[schema.USER].to_numpy()), num_buckets)
    del events  # the object store holds them now
    out_ds = ray.data.from_arrow_refs(refs).map_batches(
        lambda b: bucket_outputs(encode_block(b)), batch_format="pyarrow", batch_size=None)
    out_refs = out_ds.to_arrow_refs()
    del out_ds, refs  # frees the input blocks

    # 6. collect, order by user (stable: rows of one user stay in their generated order), unpack
    tabs = [t for t in ray.get(out_refs) if t.num_rows]
    allr = pl.concat([pl.from_arrow(t) for t in tabs], how="vertical_relaxed").sort(schema.USER, maintain_order=True)
    del tabs, out_refs  # the sorted copy is all the driver needs
    if allr[schema.USER].n_unique() != allr.height:
        raise RuntimeError("a user's events were split across Ray blocks; bucket blocks must stay whole")
    seqs = allr.drop(schema.NEGATIVES, CTR_COL)
    ev = allr.select(schema.USER, schema.NEGATIVES)
    ctr_empty = empty_ctr(stats)
    if cfg.ctr.mode == "none":
        ctr = ctr_empty
    else:
        ctr = allr.select(pl.col(CTR_COL)).explode(CTR_COL).drop_nulls().unnest(CTR_COL)
        users = allr.select(schema.USER, pl.col(CTR_COL).list.len().fill_null(0).alias("_n"))
        uid = np.repeat(users[schema.USER].to_numpy(), users["_n"].to_numpy())
        ctr = ctr.with_columns(pl.Series(schema.USER, uid)).select(ctr_empty.columns).cast(dict(ctr_empty.schema))
    del allr
    return BuildTables(seqs, ev, ctr), stats


def _handler(args: argparse.Namespace) -> int:
    try:
        cfg = load_build_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    out = resolve_path(args.output or cfg.output_dir, cfg.name)
    t0 = time.perf_counter()
    try:
        if args.engine == "polars":
            manifest = build_polars(cfg, out)
        else:
            manifest = build_ray(cfg, out, address=args.ray_address)
    except (ValueError, FileNotFoundError) as exc:
        print(f"recsys data build: {exc}", file=sys.stderr)
        return 1
    print(manifest_summary(manifest))
    print(f"build ({args.engine}) written to {out} in {time.perf_counter() - t0:.1f}s "
          f"(manifest: {out / schema.MANIFEST_FILE})")
    return 0


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.description = "Build sequences, eval negatives and CTR samples from a dataset config."
    parser.add_argument("config", help="configs/data/<name>.yaml")
    parser.add_argument("--output", default=None, help="output folder (default: the config's output_dir)")
    parser.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--engine", choices=("ray", "polars"), default="ray",
                        help="ray = Ray Data pipeline; polars = single-process reference implementation")
    parser.set_defaults(func=_handler)


def main(argv: list[str] | None = None) -> int:
    """`python -m pipelines.build CONFIG ...` (the same as `recsys data build`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="recsys data build")
    configure_cli(parser)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
