"""Any parquet or csv (with header) file, with a column mapping from config:
`columns: {user_id: uid, item_id: iid, timestamp: ts, category_id: cat, event_type: kind, label: click}`.
A mapped column that the file lacks is an error naming it."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys.data import schema
from recsys.data.parsed import ReadResult
from recsys.data.readers.base import SourceConfig

EVENT_COLUMNS = schema.REQUIRED_EVENT_COLUMNS + schema.OPTIONAL_EVENT_COLUMNS


def column_mapping(cfg: SourceConfig, where: str | Path) -> dict[str, str]:
    """The source's event column -> file column mapping (default: the required columns by their
    own names), checked: unknown event columns and missing required ones are errors naming `where`."""
    mapping = dict(cfg.columns or {c: c for c in schema.REQUIRED_EVENT_COLUMNS})
    unknown = sorted(set(mapping) - set(EVENT_COLUMNS))
    if unknown:
        raise ValueError(f"{where}: columns mapping has unknown event column(s) {unknown}; allowed {list(EVENT_COLUMNS)}")
    for col in schema.REQUIRED_EVENT_COLUMNS:
        if col not in mapping:
            raise ValueError(f"{where}: columns mapping lacks required event column {col!r}")
    return mapping


def read_table(cfg: SourceConfig) -> ReadResult:
    path = Path(cfg.path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    fmt = cfg.file_format or ("parquet" if path.suffix == ".parquet" else "csv")
    mapping = column_mapping(cfg, path)
    if fmt == "parquet":
        df = pl.read_parquet(path)
    else:
        df = pl.read_csv(path, infer_schema=False)  # strings: validation casts and reports bad values
    missing = [src for src in mapping.values() if src not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {missing} (file has {df.columns})")
    df = df.select([pl.col(src).alias(dst) for dst, src in mapping.items()])
    line = pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("line")
    df = df.with_columns(line, pl.lit(False).alias("malformed"))
    return ReadResult(df, tuple(mapping))
