"""What every reader shares: the source config, the parsed-rows convention and text-line helpers.

A reader turns a file into a *parsed* polars frame, a `recsys.data.parsed.ReadResult` (the columns
are described there; `recsys.data.validate` casts and checks them).
`read_events` (readers/__init__.py) then validates that frame into kept events + rejects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import polars as pl

from recsys.config import StrictModel

FORMATS = (
    "movielens_udata",  # u.data: user \t item \t rating \t timestamp
    "movielens_csv",  # ratings.csv: userId,movieId,rating,timestamp with header
    "movielens_dat",  # ratings.dat: user::item::rating::timestamp
    "recbole_inter",  # RecBole .inter: header `user_id:token\titem_id:token\t...`
    "sasrec_pairs",  # `user item` per line, lines in time order per user (order only)
    "sequence_lines",  # `user item1 item2 ...` per line, optional parallel times file
    "taobao_csv",  # UserBehavior.csv: user,item,category,behavior_type,timestamp (no header)
    "table",  # any parquet/csv with a column mapping
)


class SourceConfig(StrictModel):
    """Where the events come from and how to read them."""

    format: Literal[
        "movielens_udata", "movielens_csv", "movielens_dat", "recbole_inter",
        "sasrec_pairs", "sequence_lines", "taobao_csv", "table",
    ]
    path: str
    times_path: str | None = None  # sequence_lines only: same layout with timestamps
    file_format: Literal["parquet", "csv"] | None = None  # table only (default: by suffix)
    columns: dict[str, str] | None = None  # table only: event column -> source column
    rating_threshold: float | None = None  # label = rating >= threshold (sources with a rating)


def read_lines(path: str | Path) -> pl.DataFrame:
    """Every line of a text file as (line 1-based, raw). Empty lines are kept (they become
    'malformed_line' rejects rather than vanishing); only the newline after the last line is not
    a record."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    df = pl.DataFrame({"raw": pl.Series(lines, dtype=pl.String)})
    return df.with_columns(pl.col("raw").str.strip_chars_end("\r")).with_row_index("line", offset=1).with_columns(
        pl.col("line").cast(pl.Int64)
    )


def split_fixed(lines: pl.DataFrame, sep: str, names: list[str], whitespace: bool = False) -> pl.DataFrame:
    """Split each raw line into exactly len(names) string fields; other counts are malformed."""
    raw = pl.col("raw").str.strip_chars() if whitespace else pl.col("raw")
    parts = raw.str.split(sep)
    if whitespace:
        parts = parts.list.eval(pl.element().filter(pl.element() != ""))
    df = lines.with_columns(parts.alias("_parts"))
    n = len(names)
    df = df.with_columns((pl.col("_parts").list.len() != n).alias("malformed"))
    return df.with_columns([pl.col("_parts").list.get(k, null_on_oob=True).alias(name) for k, name in enumerate(names)]).drop(
        "_parts"
    )


def rating_label(threshold: float | None) -> list[pl.Expr]:
    """`label` = rating >= threshold (int8), null when the rating is not a number."""
    if threshold is None:
        return []
    rating = pl.col("rating").cast(pl.Float64, strict=False)
    return [(rating >= threshold).cast(pl.Int8).alias("label")]
