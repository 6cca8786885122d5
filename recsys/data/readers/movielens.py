"""MovieLens readers: `u.data` (tab, no header), `ratings.csv` (header), `ratings.dat` (`::`).
The rating becomes `label = rating >= rating_threshold` when a threshold is configured."""

from __future__ import annotations

from recsys.data.parsed import ReadResult
from recsys.data.readers.base import SourceConfig, rating_label, read_lines, split_fixed

NAMES = ["user_id", "item_id", "rating", "timestamp"]
HEADER = "userId,movieId,rating,timestamp"


def _finish(df, cfg: SourceConfig) -> ReadResult:
    df = df.with_columns(rating_label(cfg.rating_threshold)).drop("rating")
    cols = ("user_id", "item_id", "timestamp") + (("label",) if cfg.rating_threshold is not None else ())
    return ReadResult(df, cols)


def read_udata(cfg: SourceConfig) -> ReadResult:
    return _finish(split_fixed(read_lines(cfg.path), "\t", NAMES), cfg)


def read_dat(cfg: SourceConfig) -> ReadResult:
    return _finish(split_fixed(read_lines(cfg.path), "::", NAMES), cfg)


def read_csv(cfg: SourceConfig) -> ReadResult:
    lines = read_lines(cfg.path)
    if lines.height == 0:
        raise ValueError(f"{cfg.path}: empty file (expected header {HEADER!r})")
    header = [h.strip() for h in lines["raw"][0].split(",")]
    missing = [c for c in HEADER.split(",") if c not in header]
    if missing:
        raise ValueError(f"{cfg.path}: missing required column(s) {missing} in header {header}")
    order = {"userId": "user_id", "movieId": "item_id", "rating": "rating", "timestamp": "timestamp"}
    names = [order.get(h, f"_extra{k}") for k, h in enumerate(header)]
    df = split_fixed(lines.slice(1), ",", names)
    return _finish(df.drop([n for n in names if n.startswith("_extra")]), cfg)
