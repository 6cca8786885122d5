"""Readers for order-only and one-line-per-user formats.

- `sasrec_pairs`: `user item` per line (the SASRec paper's files), lines in time order per user.
  timestamp = 0-based order index of the line within its user.
- `sequence_lines`: `user item1 item2 ...` per line; an optional parallel `times_path` file has the
  same layout with timestamps (amazon-beauty items.txt + times.txt). Without it, timestamp = the
  item's 0-based position in its line. A line whose times line has a different user or length, or
  that has no item, is one malformed record.
"""

from __future__ import annotations

import polars as pl

from recsys.data.parsed import ReadResult
from recsys.data.readers.base import SourceConfig, read_lines, split_fixed


def read_pairs(cfg: SourceConfig) -> ReadResult:
    df = split_fixed(read_lines(cfg.path), " ", ["user_id", "item_id"], whitespace=True)
    df = df.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("user_id").alias("timestamp"))
    return ReadResult(df, ("user_id", "item_id", "timestamp"))


def _tokens(path: str) -> pl.DataFrame:
    lines = read_lines(path)
    toks = pl.col("raw").str.strip_chars().str.split(" ").list.eval(pl.element().filter(pl.element() != ""))
    return lines.with_columns(toks.alias("_tok"))


def read_lines_per_user(cfg: SourceConfig) -> ReadResult:
    df = _tokens(cfg.path)
    malformed = pl.col("_tok").list.len() < 2
    if cfg.times_path is not None:
        times = _tokens(cfg.times_path).select("line", pl.col("_tok").alias("_ttok"))
        if times.height != df.height:
            raise ValueError(
                f"{cfg.times_path}: has {times.height} lines but {cfg.path} has {df.height}; the files must be parallel"
            )
        df = df.join(times, on="line", how="left")
        malformed = (
            malformed
            | (pl.col("_ttok").list.len() != pl.col("_tok").list.len())
            | (pl.col("_ttok").list.first() != pl.col("_tok").list.first())
        )
    df = df.with_columns(malformed.alias("malformed"))
    bad = df.filter(pl.col("malformed")).select("line", "raw", "malformed")
    good = df.filter(~pl.col("malformed"))
    good = good.with_columns(
        pl.col("_tok").list.first().alias("user_id"),
        pl.col("_tok").list.slice(1).alias("item_id"),
        *([pl.col("_ttok").list.slice(1).alias("timestamp")] if cfg.times_path is not None else []),
    )
    explode_cols = ["item_id"] + (["timestamp"] if cfg.times_path is not None else [])
    good = good.drop([c for c in ("raw", "_tok", "_ttok") if c in good.columns]).explode(explode_cols)
    if cfg.times_path is None:
        good = good.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("line").cast(pl.String).alias("timestamp"))
    good = good.with_columns(pl.concat_str(["user_id", "item_id", "timestamp"], separator=" ").alias("raw"))
    cols = ["line", "raw", "malformed", "user_id", "item_id", "timestamp"]
    out = pl.concat([good.select(cols), bad.with_columns(
        pl.lit(None, pl.String).alias("user_id"), pl.lit(None, pl.String).alias("item_id"),
        pl.lit(None, pl.String).alias("timestamp"),
    ).select(cols)]).sort("line", maintain_order=True)
    return ReadResult(out, ("user_id", "item_id", "timestamp"))
