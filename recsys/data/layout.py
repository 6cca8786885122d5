"""The partitioned build layout: where each table's files are, and which of them a reader needs.

A build directory holds each per-user table as a folder of parquet parts:

    sequences/part-00000.parquet ... part-{P-1}.parquet
    eval_negatives/part-00000.parquet ...
    ctr_samples/part-00000.parquet ...

Part `p` of every table holds the same users: those with `part_of(raw user, P) == p` for a hash
build (`splitmix64(RAW user id) % P`: the raw id, so the streaming build knows an event's part
when it reads it, before the vocabulary exists; vocab/users.parquet maps dense ids back to raw
ids; `user_parts` finds the part of a dense user), or a contiguous user range for the planted generator. Rows of a
hash part are sorted by dense user id (CTR samples: by user, then in generated order); a planted
chunk keeps its generated row order (its users ascend from chunk to chunk). Every part
exists, even an empty one, so a reader never has to tell "empty" from "missing". The manifest's
`layout` entry records the part count; a reader checks it against the files on disk.

Why parts instead of one file: a training worker or a serving bootstrap reads only the parts it
needs (`worker_parts`), so its memory is O(build / N) instead of O(build); and the build's
workers write their own parts, so the driver never collects the rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data import schema
from recsys.data.negatives import splitmix64

if TYPE_CHECKING:  # polars is imported by the writers only: readers (training, serving) never load it
    import polars as pl

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
        h = splitmix64(np.asarray(raw_users).astype(np.int64).view(np.uint64))
        return (h % np.uint64(num_parts)).astype(np.int64)


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
    """`table` for `parts` as one Arrow table, the same whatever the part count. With
    `sort_by_user` (default), rows of hash parts (whose user ranges interleave) are stably merged
    into dense user order; parts that hold ascending, disjoint user ranges (the generator's
    chunks) are simply concatenated, keeping each part's row order."""
    files = table_files(build_dir, table, parts)
    if not files:
        raise ValueError(f"{table}: no parts asked for (a worker needs at least one part; "
                         f"build with at least as many parts as workers)")
    tabs = [pq.read_table(str(f), columns=columns) for f in files]
    out = pa.concat_tables(tabs)
    if sort_by_user and len(tabs) > 1 and schema.USER in out.column_names and not _ranges_ascend(tabs):
        order = np.argsort(out[schema.USER].to_numpy(), kind="stable")
        out = out.take(pa.array(order))
    return out


def _ranges_ascend(tabs: list[pa.Table]) -> bool:
    """True when every non-empty part's users all lie above the previous part's users."""
    last = -1
    for t in tabs:
        if t.num_rows:
            users = t[schema.USER].to_numpy()
            if users.min() <= last:
                return False
            last = int(users.max())
    return True


def iter_parts(build_dir: str | Path, table: str, parts: list[int] | None = None,
               columns: list[str] | None = None):
    """Yield (part, Arrow table) one part at a time: bounded memory for a streaming reader."""
    parts = list(range(num_parts(build_dir))) if parts is None else parts
    for p, f in zip(parts, table_files(build_dir, table, parts)):
        yield p, pq.read_table(str(f), columns=columns)


def user_parts(build_dir: str | Path, users: np.ndarray) -> np.ndarray:
    """The part that holds each dense user of `users` in a build (-1 for a user not in it),
    looked up from the sequence parts, so it holds for any partition rule."""
    users = np.asarray(users, dtype=np.int64)
    out = np.full(users.shape, -1, dtype=np.int64)
    for p, t in iter_parts(build_dir, SEQUENCES, columns=[schema.USER]):
        out[np.isin(users, t[schema.USER].to_numpy())] = p
    return out



# ---------------------------------------------------------------- writing


def plain_arrow(df: pl.DataFrame | pa.Table) -> pa.Table:
    """One-chunk Arrow table with the contract's plain types (polars exports large_list/large_string)."""
    table: pa.Table = (df if isinstance(df, pa.Table) else df.to_arrow()).combine_chunks()
    fields = []
    for f in table.schema:
        t = f.type
        if pa.types.is_large_list(t):
            v = t.value_type
            t = pa.list_(pa.string() if pa.types.is_large_string(v) else v)
        elif pa.types.is_large_string(t):
            t = pa.string()
        fields.append(pa.field(f.name, t, nullable=f.nullable))
    return table.cast(pa.schema(fields))


def write_part(df: pl.DataFrame | pa.Table, path: str | Path) -> None:
    """Deterministic parquet: fixed writer settings, so equal tables give equal bytes."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(plain_arrow(df), str(path), compression="zstd", row_group_size=1 << 20)


def write_partitioned(out: str | Path, table: str, df: pl.DataFrame, parts: np.ndarray, count: int) -> None:
    """Write `df` (rows in user order) as `count` parts of `table`; `parts[r]` is row r's part.
    Every part is written, an empty one too, and rows keep their order inside a part."""
    import polars as pl

    for p in range(count):
        write_part(df.filter(pl.Series(parts == p)), Path(out) / table / part_name(p))


def layout_entry(count: int, partition: str) -> dict[str, object]:
    """The manifest's `layout` entry: part count and how users were assigned to parts."""
    return {"num_parts": count, "tables": list(PER_USER_TABLES), "partition": partition}
