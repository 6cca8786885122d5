"""The streaming build, engine-free: three passes over the input, each a list of independent
units that an executor maps (in this process for the polars reference, as Ray Data tasks in
pipelines/build.py). Both engines run these same functions, so their outputs are the same bytes.

1. scatter (one unit per input chunk, recsys/data/chunks.py): read, check rows (recsys/data/validate),
   hash each kept event's RAW user into one of P buckets (`layout.part_of`) and write it to
   `_tmp/events/b-B/c-C.parquet`; row rejects of input file k go to `_tmp/rejects/b-(k mod P)/...`
   so that rejects, too, end in files whose content does not depend on the chunking.
2. bucket stats (one unit per bucket): concat the bucket's chunk files in input order, mark
   duplicates (a duplicate has the same user, so it is in the same bucket), write `rejects/part-B`
   (row rejects + duplicates, with source file and line), and the bucket's O(distinct ids)
   aggregates: sorted users, categories, and per item (count, first order, its category).
   The driver merges them into the vocabularies, popularity and item -> category (O(items)).
3. outputs (one unit per bucket): the bucket's kept events -> encode -> group per user (polars) ->
   eval negatives + CTR samples (counter-based randomness, recsys/data/negatives.py: a user's draws
   do not depend on its bucket) -> `sequences/`, `eval_negatives/`, `ctr_samples/` part B.

The driver holds O(chunks + vocabulary): chunk results, users, the item table; never events. Each
file is written to a temporary name and renamed, so a retried task rewrites the same bytes and a
killed one leaves no half file under a final name. The driver checks every expected file exists
before the next pass (an error names the missing one), and the manifest is written last,
atomically (recsys/data/build_output.py).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa

from recsys.artifacts import sha256_file
from recsys.data import layout, schema
from recsys.data.build_config import BuildConfig
from recsys.data.chunks import ORDER_SHIFT, Chunk, read_chunk
from recsys.data.readers.base import SourceConfig
from recsys.data.transform import ORDER, GlobalStats, encode, group_sequences, user_outputs
from recsys.data.validate import REASONS, check_rows, duplicate_mask, duplicate_raw

TMP_DIR = "_tmp"
REJECTS_DIR = "rejects"
REJECT_COLUMNS = {"reason": pl.String, "file": pl.String, "line": pl.Int64, "raw": pl.String}
T = TypeVar("T")
S = TypeVar("S")
R = TypeVar("R")


class Executor(Protocol):
    """Runs `fn(unit, shared)` for every unit; results in unit order."""

    def map(self, fn: Callable[[T, S], R], units: list[T], shared: S) -> list[R]: ...


class LocalExecutor:
    """One unit after another in this process (the polars reference)."""

    def map(self, fn: Callable[[T, S], R], units: list[T], shared: S) -> list[R]:
        return [fn(u, shared) for u in units]


def write_atomic(df: pl.DataFrame | pa.Table, path: Path, final: bool = False) -> None:
    """Write parquet under a temporary name, then rename: a killed writer leaves no partial file
    under `path`. `final` outputs use the deterministic writer of layout.write_part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    if final:
        layout.write_part(df, tmp)
    else:  # an intermediate: polars' writer is about 2x faster than pyarrow's here
        (df if isinstance(df, pl.DataFrame) else pl.from_arrow(df)).write_parquet(
            tmp, compression="zstd", compression_level=1, statistics=False)
    os.replace(tmp, path)


def _bdir(tmp: Path, kind: str, bucket: int) -> Path:
    return tmp / kind / f"b-{bucket:05d}"


# ---------------------------------------------------------------- pass 1: scatter


@dataclass
class ScatterShared:
    source: SourceConfig
    tmp: Path
    num_parts: int


@dataclass
class ChunkResult:
    index: int
    covered: int  # source lines / rows the chunk spans (line numbering of later chunks)
    read: int  # parsed rows
    event_buckets: list[int]
    reject_buckets: list[int]
    event_schema: dict | None  # polars schema of the kept rows (None when it kept none)
    reasons: dict[str, int]  # row rejects by reason (duplicates are found per bucket, later)


def _scatter(df: pl.DataFrame, keys: np.ndarray, tmp: Path, kind: str, chunk: int) -> list[int]:
    df = df.with_columns(pl.Series("_b", keys))
    written = []
    for (b,), part in df.partition_by("_b", maintain_order=True, as_dict=True).items():
        write_atomic(part.drop("_b"), _bdir(tmp, kind, int(b)) / f"c-{chunk:06d}.parquet")
        written.append(int(b))
    return sorted(written)


def scatter_chunk(chunk: Chunk, sh: ScatterShared) -> ChunkResult:
    """Pass 1 on one chunk (see module docstring)."""
    parsed, covered = read_chunk(chunk, sh.source)
    ok, rejects = check_rows(parsed, source=chunk.file)
    users = ok[schema.USER].to_numpy()
    ev_b = _scatter(ok, layout.part_of(users, sh.num_parts), sh.tmp, "events", chunk.index)
    # row rejects of input file k go to part k mod P: the same whatever the chunking
    rej_b = _scatter(rejects, np.full(rejects.height, chunk.file_index % sh.num_parts), sh.tmp, "rejects",
                     chunk.index) if rejects.height else []
    schema_ = dict(ok.schema) if ok.height else None
    reasons = {r: int(n) for r, n in rejects.group_by("reason").len().iter_rows()}
    return ChunkResult(chunk.index, covered, parsed.parsed.height, ev_b, rej_b, schema_, reasons)


# ---------------------------------------------------------------- pass 2: bucket statistics


@dataclass
class BucketShared:
    tmp: Path
    out: Path
    event_files: dict[int, list[Path]]  # bucket -> chunk files, in chunk order
    reject_files: dict[int, list[Path]]
    chunk_files: list[str]  # chunk index -> source file
    line_offsets: np.ndarray  # chunk index -> lines before the chunk in its file
    event_schema: dict


@dataclass
class BucketStats:
    bucket: int
    reasons: dict[str, int]
    users: np.ndarray  # sorted raw user ids of the bucket
    categories: np.ndarray | None  # sorted raw categories
    reject_file: tuple[str, str]  # (relative path, sha256)


def read_bucket(files: list[Path], event_schema: dict) -> pl.DataFrame:
    """A bucket's kept rows in input order (the chunk files of one bucket, in chunk order)."""
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"build intermediate missing (a scatter task did not finish): {missing[:3]}")
    if not files:
        return pl.DataFrame(schema=event_schema)
    return pl.concat([pl.read_parquet(f) for f in files]).sort(ORDER)


def _located(df: pl.DataFrame, sh: BucketShared) -> pl.DataFrame:
    """Add the source file and the line inside the file to rows with a chunk-relative line."""
    chunk = (df[ORDER].to_numpy() >> ORDER_SHIFT).astype(np.int64)
    files = np.asarray(sh.chunk_files, dtype=object)[chunk] if chunk.size else np.empty(0, dtype=object)
    line = df["line"].to_numpy() + sh.line_offsets[chunk]
    return df.with_columns(pl.Series("file", files, dtype=pl.String), pl.Series("line", line, dtype=pl.Int64))


def bucket_stats(bucket: int, sh: BucketShared) -> BucketStats:
    """Pass 2 on one bucket (see module docstring)."""
    events = read_bucket(sh.event_files.get(bucket, []), sh.event_schema)
    dup = duplicate_mask(events)
    dups = events.filter(dup)
    rej = [dups.select(ORDER, pl.lit("duplicate").alias("reason"), "line", duplicate_raw(dups).alias("raw"))]
    rej += [pl.read_parquet(f) for f in sh.reject_files.get(bucket, [])]
    rejects = _located(pl.concat([r.cast({ORDER: pl.Int64, "line": pl.Int64}) for r in rej]).sort(ORDER), sh)
    rel = f"{REJECTS_DIR}/{layout.part_name(bucket)}"
    write_atomic(rejects.select(list(REJECT_COLUMNS)).cast(REJECT_COLUMNS), sh.out / rel, final=True)
    reasons = {r: 0 for r in REASONS}
    for r, n in rejects.group_by("reason").len().iter_rows():
        reasons[r] = int(n)
    kept = events.filter(~dup)
    has_cat = schema.CATEGORY in kept.columns
    aggs = [pl.len().alias("count"), pl.col(ORDER).min().alias("first")]
    if has_cat:
        aggs.append(pl.col(schema.CATEGORY).sort_by(ORDER).first().alias("category"))
    write_atomic(kept.group_by(schema.ITEM).agg(aggs), _bdir(sh.tmp, "items", bucket) / "items.parquet")
    return BucketStats(bucket, reasons, np.unique(kept[schema.USER].to_numpy()),
                       np.unique(kept[schema.CATEGORY].to_numpy()) if has_cat else None,
                       (rel, sha256_file(sh.out / rel)))


# ---------------------------------------------------------------- pass 3: per-bucket outputs


@dataclass
class OutputShared:
    cfg: BuildConfig
    stats: GlobalStats
    out: Path
    event_files: dict[int, list[Path]]
    event_schema: dict


@dataclass
class PartResult:
    bucket: int
    kept: int
    users: int
    lengths: np.ndarray  # events per user of the part, in user order
    ctr_by_split: dict[str, int]
    ctr_positives: int
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256


def bucket_outputs(bucket: int, sh: OutputShared) -> PartResult:
    """Pass 3 on one bucket (see module docstring)."""
    events = read_bucket(sh.event_files.get(bucket, []), sh.event_schema)
    kept = events.filter(~duplicate_mask(events)).drop("line")
    sequences = group_sequences(encode(kept, sh.stats.vocabs))
    ev, ctr = user_outputs(sequences, sh.cfg, sh.stats)
    files = {}
    for table, df in ((layout.SEQUENCES, sequences), (layout.EVAL_NEGATIVES, ev), (layout.CTR_SAMPLES, ctr)):
        rel = f"{table}/{layout.part_name(bucket)}"
        write_atomic(df, sh.out / rel, final=True)
        files[rel] = sha256_file(sh.out / rel)
    by_split = {s: int(n) for s, n in ctr.group_by(schema.SPLIT).len().iter_rows()}
    pos = int(ctr[schema.LABEL].cast(pl.Int64).sum()) if ctr.height else 0
    lengths = sequences[schema.SEQ_ITEMS].list.len().to_numpy().astype(np.int64)
    return PartResult(bucket, kept.height, sequences.height, lengths, by_split, pos, files)
