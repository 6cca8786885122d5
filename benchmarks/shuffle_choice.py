"""Why the build partitions users with a bucketed intermediate write instead of Ray Data's hash
shuffle: both variants of the partition + group step on the same generated log, same Ray, same run.

    A bucketed write (what pipelines/build.py does): per input chunk, row checks + hash the raw user
      + write one zstd parquet file per bucket (stream_build.scatter_chunk); then per bucket, read
      its files and group users with polars (transform.group_sequences on raw ids).
    B Ray Data hash shuffle: `read_parquet` -> add the bucket column -> `groupby(bucket).map_groups`
      (the same polars grouping) with `DataContext.shuffle_strategy = HASH_SHUFFLE`; every event
      travels through the object store (capped at the benchmark's size, spilling beyond it).

Reported: wall seconds of each, and the object-store bytes spilled (Ray's memory summary). Rows go
to benchmarks/results/pipeline_shuffle.json with this command:

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.shuffle_choice --events 4000000
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.pipeline import OBJECT_STORE_BYTES, generate, load_average
from benchmarks.results import row, write_rows

COLUMNS = {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp", "category_id": "category_id",
           "event_type": "behavior_type"}


def _spilled_mib() -> float:
    import ray
    from ray._private.internal_api import memory_summary

    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    m = re.search(r"Spilled (\d+) MiB", text)
    return float(m.group(1)) if m else 0.0


def bucketed(inp: Path, tmp: Path, buckets: int, chunk_rows: int) -> int:
    """Variant A; returns the number of users grouped."""
    from pipelines.build import RayExecutor
    from recsys.data.chunks import plan_chunks
    from recsys.data.readers import SourceConfig
    from recsys.data.stream_build import ScatterShared, read_bucket, scatter_chunk
    from recsys.data.transform import group_sequences

    source = SourceConfig(format="table", path=str(inp), columns=COLUMNS)
    ex = RayExecutor()
    res = ex.map(scatter_chunk, plan_chunks(source, chunk_rows, 1 << 26), ScatterShared(source, tmp, buckets))
    files = {b: [tmp / "events" / f"b-{b:05d}" / f"c-{r.index:06d}.parquet" for r in res if b in r.event_buckets]
             for b in range(buckets)}
    schema = next(r.event_schema for r in res if r.event_schema)

    def group(b: int, sh: dict) -> int:
        return group_sequences(read_bucket(sh[b], schema).drop("line")).height

    return sum(ex.map(group, list(range(buckets)), files))


def hash_shuffle(inp: Path, buckets: int) -> int:
    """Variant B; returns the number of users grouped."""
    import polars as pl
    import pyarrow as pa
    import ray

    from recsys.data import layout
    from recsys.data.transform import group_sequences

    ctx = ray.data.DataContext.get_current()
    ctx.shuffle_strategy = ray.data.context.ShuffleStrategy.HASH_SHUFFLE

    def add_bucket(t: pa.Table) -> pa.Table:
        df = pl.from_arrow(t).rename({"behavior_type": "event_type"})
        df = df.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("order"))  # stand-in input order
        return df.with_columns(pl.Series("_b", layout.part_of(df["user_id"].to_numpy(), buckets))).to_arrow()

    def group(t: pa.Table) -> pa.Table:
        sequences = group_sequences(pl.from_arrow(t).drop("_b"))
        return pa.table({"n": [sequences.height]})

    ds = ray.data.read_parquet(str(inp)).map_batches(add_bucket, batch_format="pyarrow", batch_size=None)
    out = ds.groupby("_b", num_partitions=min(buckets, 16)).map_groups(group, batch_format="pyarrow")
    return int(sum(r["n"] for r in out.iter_rows()))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=4_000_000)
    ap.add_argument("--buckets", type=int, default=32)
    ap.add_argument("--chunk-rows", type=int, default=1_000_000)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    from pipelines.build import init_ray

    init_ray(num_cpus=2, object_store_memory=OBJECT_STORE_BYTES)
    command = (f"OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.shuffle_choice --events {args.events} "
               f"--buckets {args.buckets} --chunk-rows {args.chunk_rows}")
    load_before = load_average()
    with tempfile.TemporaryDirectory() as d:
        inp = Path(d) / "events.parquet"
        generate(inp, args.events, None)
        times, spilled, users = {}, {}, {}
        for name, fn in (("bucketed_write", lambda: bucketed(inp, Path(d) / "tmp", args.buckets, args.chunk_rows)),
                         ("hash_shuffle", lambda: hash_shuffle(inp, args.buckets))):
            before = _spilled_mib()
            t0 = time.perf_counter()
            users[name] = fn()
            times[name] = time.perf_counter() - t0
            spilled[name] = _spilled_mib() - before
            shutil.rmtree(Path(d) / "tmp", ignore_errors=True)
            print(f"{name}: {times[name]:.1f}s, {users[name]} users, spilled {spilled[name]:.0f} MiB", flush=True)
    assert users["bucketed_write"] == users["hash_shuffle"], users
    protocol = (f"generated Taobao log, {args.events} events as parquet, {args.buckets} user buckets, 2 CPUs, "
                f"object store capped at {OBJECT_STORE_BYTES // 2**20} MiB; partition + per-bucket polars grouping "
                f"only; value = bucketed intermediate write (chosen), reference = Ray Data groupby.map_groups with "
                f"HASH_SHUFFLE, ratio = reference s / value s; spilled MiB: bucketed {spilled['bucketed_write']:.0f}, "
                f"hash shuffle {spilled['hash_shuffle']:.0f}; load average (1/5/15 min) {load_before} before, "
                f"{load_average()} after (shared machine)")
    rows = [row(name="pipeline_shuffle", model=None, dataset=f"generated-taobao ({args.events} events)", seed=0,
                command=command, protocol=protocol, metric="seconds", value=times["bucketed_write"],
                reference=times["hash_shuffle"], ratio=times["hash_shuffle"] / times["bucketed_write"])]
    if not args.no_save:
        write_rows("pipeline_shuffle", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
