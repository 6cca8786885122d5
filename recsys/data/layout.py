"""The partitioned build layout: where each table's files are, and which of them a reader needs.

A build directory holds each per-user table as a folder of parquet parts:

    sequences/part-00000.parquet ... part-{P-1}.parquet
    eval_negatives/part-00000.parquet ...
    ctr_samples/part-00000.parquet ...

Part `p` of every table holds the same users: those with `part_of(raw user, P) == p` for a hash
build (`splitmix64(RAW user id) % P`: the raw id, so the build knows an event's part when it reads
it, before the vocabulary exists; vocab/users.parquet maps dense ids back to raw ids), or a
contiguous user range for the synthetic generator. Rows in a
part are sorted by dense user id (CTR samples: by user, then in generated order). Every part
exists, even an empty one, so a reader never has to tell "empty" from "missing". The manifest's
`layout` entry records the part count; a reader checks it against the files on disk.

Why parts instead of one file: a training worker or a serving bootstrap reads only the parts it
needs (`worker_parts`), so its memory is O(build / N) instead of O(build); and the build's
workers write their own parts, so the driver never collects the rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data import schema
from recsys.data.negatives import splitmix64

SEQUENCES = "sequences"
EVAL_NEGATIVES = "eval_negatives"
CTR_SAMPLES = "ctr_samples"
PER_USER_TABLES = (SEQUENCES, EVAL_NEGATIVES, CTR_SAMPLES)
PART_DIGITS = 5


def part_name(part: int) -> str:
    """Deterministic file name of part `part` (the same whatever wrote it)."""
    return f"part-{part:0{PART_DIGITS}d}.parquet"


def part_of(raw_users: np.ndarray, num_parts: int) -> np.ndarray:
    """Hash partition of RAW user ids (int64): `splitmix64(user) % num_parts` (balanced, order-free)."""
    with np.errstate(over="ignore"):
        return (splitmix64(np.asarray(raw_users).astype(np.int64).view(np.uint64)) % np.uint64(num_parts)).astype(np.int64)


def worker_parts(rank: int, world_size: int, num_parts: int) -> list[int]:
    """The parts worker `rank` of `world_size` reads: a strided slice, so every part has one reader."""
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return list(range(rank, num_parts, world_size))


def num_parts(build_dir: str | Path) -> int:
    """Part count of a build, from its manifest, checked against the sequence files on disk."""
    build_dir = Path(build_dir)
    manifest_path = build_dir / schema.MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no manifest; the build is missing or did not finish")
    layout = json.loads(manifest_path.read_text()).get("layout")
    if not layout or "num_parts" not in layout:
        raise ValueError(f"{manifest_path}: no 'layout.num_parts' entry; rebuild with this version "
                         f"(`recsys data build`): single-file builds are no longer read")
    n = int(layout["num_parts"])
    on_disk = len(list((build_dir / SEQUENCES).glob("part-*.parquet")))
    if on_disk != n:
        raise ValueError(f"{build_dir / SEQUENCES}: manifest lists {n} parts, {on_disk} on disk")
    return n


def table_files(build_dir: str | Path, table: str, parts: list[int] | None = None) -> list[Path]:
    """Files of `table` for `parts` (default: all), in part order; a missing part is an error."""
    if table not in PER_USER_TABLES:
        raise ValueError(f"unknown per-user table {table!r}; expected one of {PER_USER_TABLES}")
    build_dir = Path(build_dir)
    parts = list(range(num_parts(build_dir))) if parts is None else parts
    files = [build_dir / table / part_name(p) for p in parts]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{table}: missing part files {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    return files


def read_table(build_dir: str | Path, table: str, parts: list[int] | None = None,
               columns: list[str] | None = None, sort_by_user: bool = True) -> pa.Table:
    """`table` for `parts` as one Arrow table. With `sort_by_user` (default) rows are stably
    ordered by dense user id, which is the order of the whole table whatever the part count."""
    files = table_files(build_dir, table, parts)
    if not files:
        raise ValueError(f"{table}: no parts asked for (a worker needs at least one part; "
                         f"build with at least as many parts as workers)")
    tabs = [pq.read_table(str(f), columns=columns) for f in files]
    out = pa.concat_tables(tabs)
    if sort_by_user and len(tabs) > 1 and schema.USER in out.column_names:
        order = np.argsort(out[schema.USER].to_numpy(), kind="stable")
        out = out.take(pa.array(order))
    return out


def iter_parts(build_dir: str | Path, table: str, parts: list[int] | None = None,
               columns: list[str] | None = None):
    """Yield (part, Arrow table) one part at a time: bounded memory for a streaming reader."""
    parts = list(range(num_parts(build_dir))) if parts is None else parts
    for p, f in zip(parts, table_files(build_dir, table, parts)):
        yield p, pq.read_table(str(f), columns=columns)
