"""Input chunks of the streaming build: which files a source names, how they are cut into pieces
that one worker reads alone, and how one piece is read into parsed rows with `line` and `order`.

- A source path may be a glob (`events/*.parquet`); files are read in sorted order. A path or glob
  that matches nothing is an error naming it.
- parquet (`table` format): a chunk is a run of whole row groups (about `chunk_rows` rows).
- `taobao_csv` text: a chunk is a byte range of about `chunk_bytes` cut at line starts, so one big
  UserBehavior.csv is read by many workers. The chunk only knows its lines' positions inside the
  chunk; the build adds the line counts of the earlier chunks of the same file afterwards
  (`line_offsets`), so no extra pass over the file is needed to number lines.
- every other format (with a header, or whole-file semantics such as `sequence_lines`): one chunk
  per file, parsed by that format's reader.

`order` (the input order that breaks time ties and finds "first" events) is
`chunk index << 32 | row inside the chunk`: chunks are numbered in file order, so it sorts like the
input, whatever the chunk sizes (only its relative order is ever used, never its value).
"""

from __future__ import annotations

import glob as globlib
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.readers import parse_source
from recsys.data.parsed import ReadResult
from recsys.data.readers.base import SourceConfig, split_fixed
from recsys.data.readers.taobao import NAMES as TAOBAO_NAMES

ORDER_SHIFT = 32
SPLIT_TEXT_FORMATS = ("taobao_csv",)


@dataclass(frozen=True)
class Chunk:
    """One piece of the input that a worker reads alone."""

    index: int  # position in the plan (file order, then position in the file)
    file: str
    kind: str  # "parquet" (row groups), "text" (byte range), "whole" (whole file, its reader)
    start: int = 0  # parquet: first row group; text: first byte
    stop: int = 0  # parquet: row group after the last; text: byte after the last
    file_index: int = 0  # position of `file` among the source's files


def expand(pattern: str) -> list[str]:
    """Files of a path or glob, sorted; an error naming the pattern when nothing matches."""
    if any(ch in pattern for ch in "*?["):
        files = sorted(p for p in globlib.glob(pattern) if Path(p).is_file())
    else:
        files = [pattern] if Path(pattern).is_file() else []
    if not files:
        raise FileNotFoundError(f"input not found: {pattern!r} matches no file")
    return files


def _is_parquet(source: SourceConfig, path: str) -> bool:
    return source.format == "table" and (source.file_format or ("parquet" if path.endswith(".parquet") else "csv")) == "parquet"


def _text_cuts(path: str, chunk_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of about `chunk_bytes`, each starting at a line start."""
    size = Path(path).stat().st_size
    cuts = [0]
    with open(path, "rb") as fh:
        pos = chunk_bytes
        while pos < size:
            fh.seek(pos)
            fh.readline()  # to the start of the next line
            nxt = fh.tell()
            if nxt >= size:
                break
            if nxt > cuts[-1]:
                cuts.append(nxt)
            pos = nxt + chunk_bytes
    cuts.append(size)
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a] or [(0, 0)]


def plan_chunks(source: SourceConfig, chunk_rows: int, chunk_bytes: int) -> list[Chunk]:
    """The chunks of a source, in input order."""
    if source.times_path is not None and any(ch in source.path for ch in "*?["):
        raise ValueError(f"{source.path}: a glob cannot be combined with times_path")
    out: list[Chunk] = []
    for fi, path in enumerate(expand(source.path)):
        if _is_parquet(source, path):
            try:
                meta = pq.ParquetFile(path).metadata
            except (OSError, pa.ArrowException) as exc:
                raise ValueError(f"{path}: unreadable parquet footer: {exc}") from exc
            start, rows = 0, 0
            for g in range(meta.num_row_groups):
                rows += meta.row_group(g).num_rows
                if rows >= chunk_rows or g == meta.num_row_groups - 1:
                    out.append(Chunk(len(out), path, "parquet", start, g + 1, fi))
                    start, rows = g + 1, 0
            if meta.num_row_groups == 0:
                out.append(Chunk(len(out), path, "parquet", 0, 0, fi))
        elif source.format in SPLIT_TEXT_FORMATS:
            for a, b in _text_cuts(path, chunk_bytes):
                out.append(Chunk(len(out), path, "text", a, b, fi))
        else:
            out.append(Chunk(len(out), path, "whole", file_index=fi))
    return out


def _read_text(chunk: Chunk) -> pl.DataFrame:
    """(line inside the chunk, 1-based; raw) of every line in the chunk's byte range."""
    with open(chunk.file, "rb") as fh:
        fh.seek(chunk.start)
        data = fh.read(chunk.stop - chunk.start)
    text = data.decode("utf-8", errors="replace")
    if text.endswith("\n"):
        text = text[:-1]
    lines = pl.Series("raw", [text], dtype=pl.String).str.split("\n").explode() if data else pl.Series("raw", [], pl.String)
    df = pl.DataFrame({"raw": lines}).with_columns(pl.col("raw").str.strip_chars_end("\r"))
    return df.with_row_index("line", offset=1).with_columns(pl.col("line").cast(pl.Int64))


def _read_parquet(chunk: Chunk, source: SourceConfig) -> ReadResult:
    from recsys.data.readers.table import column_mapping

    mapping = column_mapping(source, chunk.file)
    pf = pq.ParquetFile(chunk.file)
    missing = [src for src in mapping.values() if src not in pf.schema_arrow.names]
    if missing:
        raise ValueError(f"{chunk.file}: missing required column(s) {missing} (file has {pf.schema_arrow.names})")
    table = pf.read_row_groups(list(range(chunk.start, chunk.stop)), columns=sorted(set(mapping.values())))
    df = pl.from_arrow(table).select([pl.col(src).alias(dst) for dst, src in mapping.items()])
    line = pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("line")
    return ReadResult(df.with_columns(line, pl.lit(False).alias("malformed")), tuple(mapping))


def read_chunk(chunk: Chunk, source: SourceConfig) -> tuple[ReadResult, int]:
    """(parsed rows with `order`, source lines or rows the chunk covers). `line` is inside the
    chunk for split formats (see `line_offsets`), inside the file otherwise. Text that does not
    decode becomes malformed lines (rejects with file and line); a file that cannot be read at all
    (I/O error, corrupt parquet) is an error naming it and the failing piece."""
    try:
        return _read_chunk(chunk, source)
    except (OSError, pa.ArrowException) as exc:
        where = f"row groups {chunk.start}..{chunk.stop - 1}" if chunk.kind == "parquet" else \
            f"bytes {chunk.start}..{chunk.stop}" if chunk.kind == "text" else "the file"
        raise ValueError(f"{chunk.file}: unreadable ({where}): {exc}") from exc


def _read_chunk(chunk: Chunk, source: SourceConfig) -> tuple[ReadResult, int]:
    if chunk.kind == "parquet":
        res = _read_parquet(chunk, source)
        covered = res.parsed.height
    elif chunk.kind == "text":
        lines = _read_text(chunk)
        res = ReadResult(split_fixed(lines, ",", TAOBAO_NAMES), ("user_id", "item_id", "timestamp", "category_id", "event_type"))
        covered = lines.height
    else:
        res = parse_source(source.model_copy(update={"path": chunk.file}))
        covered = 0  # whole-file lines are already absolute
    order = (pl.int_range(pl.len(), dtype=pl.Int64) + (chunk.index << ORDER_SHIFT)).alias("order")
    return ReadResult(res.parsed.with_columns(order), res.has_columns), covered


def line_offsets(chunks: list[Chunk], covered: dict[int, int]) -> list[int]:
    """Per chunk: lines of the earlier chunks of the same file (added to the chunk's own line numbers)."""
    out, last_file, acc = [], None, 0
    for c in chunks:
        if c.file != last_file:
            last_file, acc = c.file, 0
        out.append(acc)
        acc += covered[c.index]
    return out
