"""RecBole atomic `.inter` files: tab-separated with a typed header such as
`user_id:token\titem_id:token\trating:float\ttimestamp:float`. Fields are found by name (the part
before the colon); a rating becomes `label` when a threshold is configured."""

from __future__ import annotations

from recsys.data.parsed import ReadResult
from recsys.data.readers.base import SourceConfig, rating_label, read_lines, split_fixed

KNOWN = {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp", "rating": "rating"}


def read_inter(cfg: SourceConfig) -> ReadResult:
    lines = read_lines(cfg.path)
    if lines.height == 0:
        raise ValueError(f"{cfg.path}: empty file (expected a RecBole header line)")
    header = [h.split(":", 1)[0].strip() for h in lines["raw"][0].split("\t")]
    for col in ("user_id", "item_id", "timestamp"):
        if col not in header:
            raise ValueError(f"{cfg.path}: missing required column {col!r} in header {header}")
    names = [KNOWN.get(h, f"_extra{k}") for k, h in enumerate(header)]
    df = split_fixed(lines.slice(1), "\t", names)
    df = df.drop([n for n in names if n.startswith("_extra")])
    cols = ["user_id", "item_id", "timestamp"]
    if cfg.rating_threshold is not None:
        if "rating" not in header:
            raise ValueError(f"{cfg.path}: rating_threshold set but the file has no 'rating' column")
        df = df.with_columns(rating_label(cfg.rating_threshold))
        cols.append("label")
    if "rating" in df.columns:
        df = df.drop("rating")
    return ReadResult(df, tuple(cols))
