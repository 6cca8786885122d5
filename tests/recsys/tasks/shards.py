"""Test helpers for sharded tasks: re-partition a build into hash parts (the same rows in a
different layout) and run a function on 2 CPU processes joined by a gloo process group."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import polars as pl
import torch

from recsys.artifacts import MANIFEST_FILE, write_manifest
from recsys.data import layout, schema


def repartition(src: Path, dst: Path, num_parts: int) -> Path:
    """Copy build `src` to `dst` with every per-user table rewritten as `num_parts` hash parts
    (layout.part_of; rows stably sorted by user, as the build writes them); the rest is copied as
    is. `num_parts=1` gives the single-file layout of before the partitioned build."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*layout.PER_USER_TABLES, MANIFEST_FILE))
    for table in layout.PER_USER_TABLES:
        df = pl.from_arrow(layout.read_table(src, table)).sort(schema.USER, maintain_order=True)
        layout.write_partitioned(dst, table, df, layout.part_of(df[schema.USER].to_numpy(), num_parts), num_parts)
    manifest = json.loads((src / MANIFEST_FILE).read_text())
    extra = {k: v for k, v in manifest.items() if k not in ("files", "created", "code_version", "versions")}
    write_manifest(dst, {**extra, "layout": layout.layout_entry(num_parts, "splitmix64(dense user id) % num_parts")})
    return dst


def _worker(rank: int, world: int, init_file: str, out_dir: str, fn: Callable[..., Any], args: tuple) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def run_ranks(fn: Callable[..., Any], *args: Any, world: int = 2) -> list[Any]:
    """fn(rank, world, *args) on `world` spawned CPU processes (gloo); their return values, by rank
    (saved with torch.save: tensors, arrays, dicts). `fn` must be a module-level function."""
    with tempfile.TemporaryDirectory(prefix="ranks_") as tmp:
        init_file = os.path.join(tmp, "init")
        torch.multiprocessing.spawn(_worker, args=(world, init_file, tmp, fn, args), nprocs=world, join=True)
        return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(world)]
