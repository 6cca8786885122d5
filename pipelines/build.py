"""`recsys data build CONFIG`: the streaming build on Ray Data (local, or a cluster with --ray-address).

The passes are those of recsys/data/stream_build.py (read in workers -> validate -> per-bucket
files; per-bucket duplicates, rejects and aggregates; per-bucket grouping, negatives and CTR
samples), run here as Ray Data tasks: each pass is `ray.data.from_items(units).map_batches(...)`
with one unit (input chunk or user bucket) per task, so the workers read the input and write every
output; the driver gets back only small results (counts, a bucket's users, checksums) and merges
the O(items) aggregates. The polars reference (`--engine polars`) runs the same functions in one
process, so both engines write the same bytes whatever the parallelism, the chunk sizes or the
number of nodes (only `num_buckets` = output parts is part of the output's identity).

Why a bucketed intermediate write and not Ray Data's hash shuffle: measured with
benchmarks/shuffle_choice.py (results/pipeline_shuffle.json) on this 2-core machine, 2M generated
events, 16 buckets, the same polars grouping after the partition: bucketed write 70.7 s, Ray Data
`groupby(bucket).map_groups` with `DataContext.shuffle_strategy = HASH_SHUFFLE` 92.6 s (shared
machine, load average 14-28; neither spilled at that size under a 512 MiB store). The hash shuffle
also moves every event through the object store (serialised; spilled to disk once the store is
full: 100M events are ~4 GB as Arrow) and needs aggregator actors holding a partition each, while the
bucketed write keeps the object store out of the data path: the raw-id hash lets the read pass
pick each event's bucket before any vocabulary exists, so one pass over the input suffices and
each bucket is read back from its zstd files by one task.

Faults: Ray retries a task whose worker or node died (Ray Data's default for system failures);
every file is written under a temporary name and renamed, so a retried task rewrites the same
bytes (tests/pipelines/test_build_cluster.py kills a worker mid-build). A step that raises fails
the build with its own error (e.g. the unreadable file and byte range); before each pass and the
manifest the driver checks that every expected file exists and names a missing one. The manifest,
written last and atomically, is never there for a partial build.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from recsys.config import ConfigError
from recsys.data import schema
from recsys.data.build_config import BuildConfig, load_build_config, resolve_path
from recsys.data.build_run import build_polars, run_build
from recsys.data.transform import manifest_summary

log = logging.getLogger(__name__)
T = TypeVar("T")
S = TypeVar("S")
R = TypeVar("R")


def init_ray(address: str | None = None, num_cpus: int = 2, object_store_memory: int | None = None) -> None:
    """Connect to `address`, or start a small local Ray without the dashboard (reuses a running one)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 object_store_memory=object_store_memory)


class RayExecutor:
    """Maps units as Ray Data tasks (one unit per task); `shared` travels once through the object store.
    Ray Data's task defaults retry a task whose worker or node died (max_retries=-1 for system
    failures); an exception raised by the step itself is not retried and fails the build."""

    def map(self, fn: Callable[[T, S], R], units: list[T], shared: S) -> list[R]:
        import ray

        if not units:
            return []
        shared_ref = ray.put(shared)
        blobs = [pickle.dumps(u) for u in units]

        def call(batch: dict) -> dict:
            sh = ray.get(shared_ref)
            return {"r": np.array([pickle.dumps(_run_step(fn, pickle.loads(b), sh)) for b in batch["u"]], dtype=object)}

        ctx = ray.data.DataContext.get_current()
        reserve = ctx.op_resource_reservation_enabled
        # Ray Data's per-operator reservation let only one of the two local CPUs run these tasks
        # (measured: 8 one-second tasks on 2 CPUs took 6.5 s with it, 4.8 s without); the
        # units are independent, so every free CPU may take one
        ctx.op_resource_reservation_enabled = False
        try:
            ds = ray.data.from_items([{"u": b} for b in blobs], override_num_blocks=len(units))
            out = ds.map_batches(call, batch_size=1, num_cpus=1)
            results = [pickle.loads(row["r"]) for row in out.iter_rows()]
        finally:
            ctx.op_resource_reservation_enabled = reserve
        for ok, value in results:
            if not ok:
                raise value  # the step's own error (e.g. ValueError naming the file), not Ray's wrapper
        return [value for _, value in results]


def _run_step(fn: Callable[[T, S], R], unit: T, shared: S) -> tuple[bool, object]:
    """(True, result) or (False, the exception the step raised): a step's error is deterministic, so
    it is returned to the driver with its type and message instead of being retried; a worker or
    node that dies is a Ray system failure and is retried by Ray."""
    try:
        return True, fn(unit, shared)
    except Exception as exc:  # noqa: BLE001 - handed to the driver, which raises it
        return False, exc


def build_ray(cfg: BuildConfig, output_dir: str | Path, address: str | None = None) -> dict:
    """Run the streaming build on Ray Data; returns the manifest (same files as the polars path)."""
    init_ray(address)
    t0 = time.perf_counter()
    manifest = run_build(cfg, output_dir, RayExecutor(), engine="ray")
    log.info("ray build done in %.1fs", time.perf_counter() - t0)
    return manifest


def _handler(args: argparse.Namespace) -> int:
    try:
        cfg = load_build_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.input:  # the source path from the command line (a file or a glob)
        cfg = cfg.model_copy(update={"source": cfg.source.model_copy(update={"path": args.input})})
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
    parser.add_argument("--input", default=None, help="input file or glob (default: the config's source.path)")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster address, e.g. ray://head:10001 or auto (default: start a local Ray)")
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
