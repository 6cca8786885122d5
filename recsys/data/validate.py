"""Validation: parsed source rows -> kept events + rejects, nothing dropped silently.

Every parsed row ends either in the events (typed per recsys/data/schema.py, plus `line` and the
input `order` used to break time ties) or in the rejects with exactly one reason, checked in this
order:

    malformed_line      wrong number of fields / unreadable record
    non_integer_id      user_id, item_id or category_id missing or not an integer
    null_timestamp      timestamp missing or not an integral number
    negative_timestamp  timestamp < 0
    bad_label           label present in the source but not 0 or 1 (e.g. rating "abc", a label of 2 or -1)
    duplicate           every event column equal to an earlier kept row (the first is kept)

`read = kept + rejected` always holds (checked; a violation raises). A required column missing from the source is an
error naming it; a rejected fraction above `max_reject_fraction` is an error with the per-reason
counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from recsys.data import schema
from recsys.data.parsed import ReadResult

REASONS = ("malformed_line", "non_integer_id", "null_timestamp", "negative_timestamp", "bad_label", "duplicate")
REJECTS_SCHEMA = {"reason": pl.String, "line": pl.Int64, "raw": pl.String}


class RejectFractionError(ValueError):
    """Too many input rows were rejected."""


@dataclass
class Validated:
    events: pl.DataFrame  # event columns + line + order
    rejects: pl.DataFrame  # reason, line, raw
    read: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return self.events.height

    @property
    def rejected(self) -> int:
        return self.rejects.height

    def summary(self) -> dict:
        return {"read": self.read, "kept": self.kept, "rejected": self.rejected, "rejects_by_reason": self.counts}


def _int_id(col: str, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.String:
        return pl.col(col).str.strip_chars().cast(pl.Int64, strict=False)
    if dtype.is_float():
        c = pl.col(col)
        return pl.when(c.is_finite() & (c.round(0) == c)).then(c.cast(pl.Int64, strict=False)).otherwise(None)
    return pl.col(col).cast(pl.Int64, strict=False)


def _int_time(dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.String:
        s = pl.col(schema.TIME).str.strip_chars()
        as_int = s.cast(pl.Int64, strict=False)
        as_float = s.cast(pl.Float64, strict=False)
        integral = as_float.is_finite() & (as_float.round(0) == as_float) & (as_float.abs() < 9.0e18)
        return pl.coalesce(as_int, pl.when(integral).then(as_float.cast(pl.Int64, strict=False)))
    return _int_id(schema.TIME, dtype)


def check_rows(result: ReadResult, source: str = "<input>") -> tuple[pl.DataFrame, pl.DataFrame]:
    """Row-level checks of parsed rows that carry `order`: (typed ok rows: event columns + line + order,
    rejects: order + reason, line, raw). The `raw` text of a source without one is built only for
    the rejected rows (building it for every row would cost a string per event)."""
    df = result.parsed
    for col in schema.REQUIRED_EVENT_COLUMNS:
        if col not in result.has_columns or col not in df.columns:
            raise ValueError(f"{source}: missing required column {col!r}")
    if "malformed" not in df.columns:
        df = df.with_columns(pl.lit(False).alias("malformed"))
    id_cols = [c for c in (schema.USER, schema.ITEM, schema.CATEGORY) if c in result.has_columns]
    typed = [_int_id(c, df.schema[c]).alias(c) for c in id_cols]
    typed.append(_int_time(df.schema[schema.TIME]).alias(schema.TIME))
    label_bad = pl.lit(False)
    if schema.LABEL in result.has_columns:
        lab_typed = _int_id(schema.LABEL, df.schema[schema.LABEL])
        # a click label is 0 or 1; anything else (2, -1, 300, text) is a counted `bad_label` reject
        label_bad = lab_typed.is_null() | ~lab_typed.is_in([0, 1])
        typed.append(pl.when(label_bad).then(None).otherwise(lab_typed).cast(pl.Int8).alias(schema.LABEL))
    if schema.EVENT_TYPE in result.has_columns:
        typed.append(pl.col(schema.EVENT_TYPE).cast(pl.String).str.strip_chars().alias(schema.EVENT_TYPE))
    if "raw" not in df.columns:
        parts = [pl.col(c).cast(pl.String).fill_null("null") for c in result.has_columns]
        raw_expr = pl.concat_str(parts, separator=",")
    else:
        raw_expr = pl.col("raw")
    event_cols = [c for c in schema.REQUIRED_EVENT_COLUMNS + schema.OPTIONAL_EVENT_COLUMNS if c in result.has_columns]
    untyped = df
    df = df.with_columns(label_bad.alias("_label_bad")).with_columns(typed)
    ids_bad = pl.any_horizontal([pl.col(c).is_null() for c in id_cols])
    reason = (
        pl.when(pl.col("malformed")).then(pl.lit("malformed_line"))
        .when(ids_bad).then(pl.lit("non_integer_id"))
        .when(pl.col(schema.TIME).is_null()).then(pl.lit("null_timestamp"))
        .when(pl.col(schema.TIME) < 0).then(pl.lit("negative_timestamp"))
        .when(pl.col("_label_bad")).then(pl.lit("bad_label"))
        .otherwise(pl.lit(None, pl.String))
    )
    reasons = df.select(reason.alias("reason"))["reason"]
    bad = reasons.is_not_null()
    # the source text of the rejected rows only (few), from the untyped columns
    rejects = untyped.filter(bad).select("order", reasons.filter(bad).alias("reason"), "line", raw_expr.alias("raw"))
    rejects = rejects.cast({"order": pl.Int64, **REJECTS_SCHEMA})
    ok = df.filter(~bad).select(*event_cols, pl.col("line").cast(pl.Int64), pl.col("order").cast(pl.Int64))
    return ok, rejects


def duplicate_mask(events: pl.DataFrame) -> pl.Series:
    """True for every row whose event columns all equal an earlier row's (rows in input order)."""
    event_cols = [c for c in schema.REQUIRED_EVENT_COLUMNS + schema.OPTIONAL_EVENT_COLUMNS if c in events.columns]
    return events.select((~pl.struct(event_cols).is_first_distinct()).alias("dup"))["dup"]


def count_reasons(rejects: pl.DataFrame) -> dict[str, int]:
    counts = {r: 0 for r in REASONS}
    for r, n in rejects.group_by("reason").len().iter_rows():
        counts[r] = int(n)
    return counts


def check_fraction(read: int, counts: dict[str, int], max_reject_fraction: float, source: str) -> None:
    """Raise RejectFractionError when more than `max_reject_fraction` of `read` rows were rejected."""
    rejected = sum(counts.values())
    frac = rejected / read if read else 0.0
    if frac > max_reject_fraction:
        detail = ", ".join(f"{k}={v}" for k, v in counts.items() if v)
        raise RejectFractionError(
            f"{source}: rejected {rejected} of {read} rows ({frac:.2%}) > max_reject_fraction "
            f"{max_reject_fraction:.2%} ({detail})"
        )


def validate(result: ReadResult, max_reject_fraction: float = 1.0, source: str = "<input>") -> Validated:
    """Row checks + duplicates of a whole in-memory source (the streaming build runs the same
    checks per chunk, and the duplicate check per user bucket: duplicates share their user)."""
    df = result.parsed
    for col in schema.REQUIRED_EVENT_COLUMNS:
        if col not in result.has_columns or col not in df.columns:
            raise ValueError(f"{source}: missing required column {col!r}")
    read = df.height
    if read == 0:
        raise ValueError(f"{source}: no input rows")
    df = df.with_row_index("order").with_columns(pl.col("order").cast(pl.Int64))
    ok, row_rejects = check_rows(ReadResult(df, result.has_columns), source)
    dup = duplicate_mask(ok)
    dups = ok.filter(dup)
    dup_rejects = dups.select("order", pl.lit("duplicate").alias("reason"), "line",
                              duplicate_raw(dups).alias("raw"))
    rejects = pl.concat([row_rejects, dup_rejects.cast(row_rejects.schema)]).sort("order").drop("order")
    events = ok.filter(~dup)
    counts = count_reasons(rejects)
    out = Validated(events=events, rejects=rejects, read=read, counts=counts)
    if out.read != out.kept + out.rejected:  # not an assert: must hold under python -O too
        raise RuntimeError(f"{source}: row accounting broken: read {out.read} != kept {out.kept} + rejected {out.rejected}")
    check_fraction(read, counts, max_reject_fraction, source)
    return out


def duplicate_raw(dups: pl.DataFrame) -> pl.Series:
    """The `raw` of a duplicate reject: its typed event columns joined by commas (the streaming
    build finds duplicates after the source text is gone; this is the same whatever the engine)."""
    event_cols = [c for c in schema.REQUIRED_EVENT_COLUMNS + schema.OPTIONAL_EVENT_COLUMNS if c in dups.columns]
    parts = [pl.col(c).cast(pl.String).fill_null("null") for c in event_cols]
    return dups.select(pl.concat_str(parts, separator=",").alias("raw"))["raw"]
