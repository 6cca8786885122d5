"""`recsys data build CONFIG`: the Ray Data pipeline that builds per-user sequences and samples.

Steps (each per-user result is computed by the same functions as the single-process polars
reference in recsys/data/transform.py, so both give identical tables; a test asserts it):

1. read + validate in the driver with the readers of recsys/data/readers (text formats need the
   source line numbers for rejects; reading is a small part of the time).
2. Ray Data, per block (map_batches): per-block unique users, item counts and each item's first
   (input order) category; the driver merges these small tables into the vocabularies (dense ids by
   sorted raw id), item popularity and item -> category.
3. per block: encode raw -> dense ids and tag each event with `bucket = splitmix64(user) % num_buckets`.
4. `groupby("bucket").map_groups(...)`: one group per bucket, i.e. many users per group; inside it
   polars does the stable sort on (user, timestamp, input order) and the per-user list aggregation.
   Why buckets: Ray's groupby is sort-based with one group per key; grouping by user directly
   makes one tiny Python call per user and the range partitioning of its sort skews on heavy users
   (one 10k-event user lands in one partition with its neighbours). A few hashed buckets give
   balanced, large groups and polars groups them locally in native code; per-user order inside a
   bucket is the same as in the global sort, so the result equals the reference.
5. per block of sequence rows (map_batches): eval negatives and CTR samples. Random draws are
   counter-based hashes of (seed, user, slot) (recsys/data/negatives.py), so the output does not
   depend on which block or bucket a user is in.
6. the driver collects the (already small, jagged) outputs, sorts rows by user (stable) and writes
   the same parquet files + manifest as the polars path.

Local Ray when no address is given (`ray.init(num_cpus=2, include_dashboard=False)`); the same code
runs on a cluster with `--ray-address`. Ray Data shows its progress bars for the long steps.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from recsys.config import ConfigError
from recsys.data import schema
from recsys.data.build_config import BuildConfig, load_build_config, resolve_path, resolved_source
from recsys.data.negatives import _mix
from recsys.data.readers import read_events
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


def init_ray(address: str | None = None, num_cpus: int = 2) -> None:
    """Connect to `address`, or start a small local Ray without the dashboard (reuses a running one)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)


def _block_stats(batch: pa.Table) -> pa.Table:
    """Per block: raw item, count, first input order and its category (one row per item)."""
    df = pl.from_arrow(batch)
    aggs = [pl.len().alias("count"), pl.col(ORDER).min().alias("first_order")]
    if schema.CATEGORY in df.columns:
        aggs.append(pl.col(schema.CATEGORY).sort_by(ORDER).first().alias("first_category"))
    return df.group_by(schema.ITEM).agg(aggs).to_arrow()


def bucket_of(users: np.ndarray, num_buckets: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (_mix(users.astype(np.uint64)) % np.uint64(num_buckets)).astype(np.int64)


def build_ray(cfg: BuildConfig, output_dir: str | Path, address: str | None = None) -> dict:
    """Run the build on Ray Data; returns the manifest (same files as the polars path)."""
    import ray

    init_ray(address)
    t0 = time.perf_counter()
    validated = read_events(resolved_source(cfg), cfg.max_reject_fraction)
    log.info("read %d rows: kept %d, rejected %d %s", validated.read, validated.kept, validated.rejected,
             {k: v for k, v in validated.counts.items() if v})
    tables, stats = transform_ray(validated.events, cfg)
    manifest = write_build(Path(output_dir), tables, stats, validated, cfg, engine="ray")
    log.info("ray build done in %.1fs", time.perf_counter() - t0)
    return manifest


def transform_ray(events: pl.DataFrame, cfg: BuildConfig, num_blocks: int | None = None) -> tuple[BuildTables, GlobalStats]:
    """The transformation of recsys.data.transform.transform, distributed with Ray Data."""
    import ray

    has_cats = schema.CATEGORY in events.columns
    n_blocks = num_blocks or max(2, min(64, events.height // 250_000 + 1))
    ds = ray.data.from_arrow(events.to_arrow()).repartition(n_blocks)

    # 2. global statistics from small per-block tables
    parts = [ray.get(r) for r in ds.map_batches(_block_stats, batch_format="pyarrow", batch_size=None).to_arrow_refs()]
    item_stats = pl.from_arrow(pa.concat_tables(parts)) if parts else None
    users = np.unique(events[schema.USER].to_numpy())  # cheap next to the rest; keeps one pass less
    agg = [pl.col("count").sum()]
    if has_cats:
        agg.append(pl.col("first_category").sort_by("first_order").first())
    merged = item_stats.group_by(schema.ITEM).agg(agg)
    cats = merged["first_category"].to_numpy() if has_cats else None
    vocabs = fit_vocabularies(users, merged[schema.ITEM].to_numpy(), np.unique(events[schema.CATEGORY].to_numpy()) if has_cats else None)
    n = len(vocabs["items"])
    dense_items = vocabs["items"].encode(merged[schema.ITEM].to_numpy())
    popularity = np.zeros(n + 1, dtype=np.int64)
    popularity[dense_items] = merged["count"].to_numpy()
    item_category = None
    if has_cats:
        item_category = np.zeros(n + 1, dtype=np.int64)
        item_category[dense_items] = vocabs["categories"].encode(cats)
    stats = GlobalStats(vocabs, popularity, item_category)

    # 3. encode + bucket
    num_buckets = cfg.num_buckets

    def encode_block(batch: pa.Table) -> pa.Table:
        df = encode(pl.from_arrow(batch), vocabs)
        return df.with_columns(pl.Series(BUCKET, bucket_of(df[schema.USER].to_numpy(), num_buckets))).to_arrow()

    encoded = ds.map_batches(encode_block, batch_format="pyarrow", batch_size=None)

    # 4. group each bucket locally with polars
    def group_bucket(batch: pa.Table) -> pa.Table:
        return group_sequences(pl.from_arrow(batch).drop(BUCKET)).to_arrow()

    seqs_ds = encoded.groupby(BUCKET).map_groups(group_bucket, batch_format="pyarrow").materialize()

    # 5. per-user outputs
    def ev_block(batch: pa.Table) -> pa.Table:
        return user_outputs(pl.from_arrow(batch), cfg.model_copy(update={"ctr": cfg.ctr.model_copy(update={"mode": "none"})}), stats)[0].to_arrow()

    def ctr_block(batch: pa.Table) -> pa.Table:
        return user_outputs(pl.from_arrow(batch), cfg, stats)[1].to_arrow()

    ev_refs = seqs_ds.map_batches(ev_block, batch_format="pyarrow", batch_size=None).to_arrow_refs()
    ctr_refs = seqs_ds.map_batches(ctr_block, batch_format="pyarrow", batch_size=None).to_arrow_refs() if cfg.ctr.mode != "none" else []

    # 6. collect, order by user (stable: rows of one user stay in their generated order)
    def collect(refs, empty: pl.DataFrame | None = None) -> pl.DataFrame:
        tabs = [t for t in ray.get(refs) if t.num_rows]
        if not tabs:
            return empty if empty is not None else pl.DataFrame()
        return pl.concat([pl.from_arrow(t) for t in tabs], how="vertical_relaxed").sort(schema.USER, maintain_order=True)

    seqs = collect(seqs_ds.to_arrow_refs())
    ev = collect(ev_refs)
    ctr = collect(ctr_refs, empty_ctr(stats)) if cfg.ctr.mode != "none" else empty_ctr(stats)
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
