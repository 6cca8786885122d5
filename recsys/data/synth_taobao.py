"""Full-scale generated Taobao UserBehavior logs (`recsys data synth --format taobao --events N`).

Writes `UserBehavior.csv` in the real file's format (`user,item,category,behavior,timestamp`, no
header; optionally the same columns as parquet) streamed block by block, so memory is O(users +
block) whatever the event count. Shape (defaults scale with --events like the real log, whose
100M events have ~1M users, ~4.1M items, ~9.4k categories):

- users = events / 100; per-user lengths lognormal (sigma 1.4) scaled to sum exactly to `events`,
  so a few users reach 20k+ events at 100M (the real log's heavy users) while the median is ~50;
- items = events / 25 with long-tailed popularity (rank = items * u^3: the top 1% of items get
  ~21% of the events); categories = min(10k, events / 10k), skewed, each item has one category;
- behaviours pv / cart / fav / buy with the real log's proportions 89.5 / 5.5 / 2.9 / 2.1 %
  (the sample in shared/data/taobao-userbehavior-sample: 89.8 / 5.3 / 2.8 / 2.1 %);
- timestamps uniform in the real 9-day window (2017-11-25 .. 2017-12-03, Beijing time), sorted per
  user; rows grouped by user, users ascending, as in the real file;
- raw item and category ids are a fixed bijection of their popularity ranks (sparse, unordered ids
  like the real ones). Deterministic for a given config (each block has its own seeded generator).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from pydantic import model_validator

from recsys.config import StrictModel
from recsys.data.negatives import splitmix64

WINDOW = (1_511_539_200, 1_512_316_800)  # 2017-11-25 00:00 .. 2017-12-04 00:00, UTC+8
BEHAVIORS = ("pv", "cart", "fav", "buy")
BEHAVIOR_P = (0.895, 0.055, 0.029, 0.021)
COLUMNS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]


class TaobaoSynthConfig(StrictModel):
    events: int
    users: int | None = None  # default events // 100
    items: int | None = None  # default events // 25
    categories: int | None = None  # default min(10_000, events // 10_000)
    length_sigma: float = 1.4
    max_length: int = 100_000
    block_events: int = 2_000_000
    seed: int = 0
    file_format: Literal["csv", "parquet"] = "csv"

    @model_validator(mode="after")
    def _check(self) -> "TaobaoSynthConfig":
        if self.events < 1 or self.block_events < 1:
            raise ValueError("events and block_events must be >= 1")
        if self.num_users > self.events:
            raise ValueError(f"users ({self.num_users}) must be <= events ({self.events})")
        return self

    @property
    def num_users(self) -> int:
        return self.users or max(1, self.events // 100)

    @property
    def num_items(self) -> int:
        return self.items or max(10, self.events // 25)

    @property
    def num_categories(self) -> int:
        return self.categories or max(2, min(10_000, self.events // 10_000))


def user_lengths(cfg: TaobaoSynthConfig) -> np.ndarray:
    """Per-user event counts: lognormal, >= 1, <= max_length, summing exactly to cfg.events."""
    rng = np.random.default_rng([cfg.seed, 0])
    raw = rng.lognormal(0.0, cfg.length_sigma, size=cfg.num_users)
    n = np.clip(np.round(raw / raw.sum() * cfg.events), 1, cfg.max_length).astype(np.int64)
    diff = cfg.events - int(n.sum())
    while diff:
        if diff > 0:  # add to random users below the cap
            room = np.flatnonzero(n < cfg.max_length)
            pick = rng.choice(room, size=min(diff, room.size), replace=False)
            n[pick] += 1
        else:  # take from the longest users
            pick = np.argsort(-n, kind="stable")[: min(-diff, int((n > 1).sum()))]
            n[pick] -= 1
        diff = cfg.events - int(n.sum())
    return n


def _prime_at_least(n: int) -> int:
    def is_prime(k: int) -> bool:
        return k > 1 and all(k % d for d in range(2, int(k**0.5) + 1))

    while not is_prime(n):
        n += 1
    return n


def _sparse_ids(ranks: np.ndarray, count: int, salt: int) -> np.ndarray:
    """A bijection of 0..count-1 onto sparse ids in 1..p (p prime ~1.25 count): (a*r + b) mod p + 1."""
    p = _prime_at_least(int(count * 1.25) + 2)
    a = 2 + (salt * 7919) % (p - 2)
    return (ranks.astype(np.int64) * a + salt) % p + 1


def _item_category_rank(item_rank: np.ndarray, categories: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = splitmix64(item_rank.astype(np.uint64) + np.uint64(0x5EED))
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.minimum((categories * u**2).astype(np.int64), categories - 1)


def block(cfg: TaobaoSynthConfig, index: int, first_user: int, lengths: np.ndarray) -> pl.DataFrame:
    """The events of users first_user .. first_user+len(lengths)-1, grouped by user, time-sorted."""
    rng = np.random.default_rng([cfg.seed, 1, index])
    n = int(lengths.sum())
    user = np.repeat(np.arange(first_user, first_user + lengths.size, dtype=np.int64) + 1, lengths)
    ts = rng.integers(WINDOW[0], WINDOW[1], size=n)
    order = np.lexsort((ts, user))
    item_rank = np.minimum((cfg.num_items * rng.random(n) ** 3).astype(np.int64), cfg.num_items - 1)
    cat_rank = _item_category_rank(item_rank, cfg.num_categories)
    kind = rng.choice(len(BEHAVIORS), size=n, p=BEHAVIOR_P)
    return pl.DataFrame({
        "user_id": user[order],
        "item_id": _sparse_ids(item_rank, cfg.num_items, 17)[order],
        "category_id": _sparse_ids(cat_rank, cfg.num_categories, 29)[order],
        "behavior_type": pl.Series(np.asarray(BEHAVIORS)[kind[order]]),
        "timestamp": ts[order].astype(np.int64),
    })


def generate(cfg: TaobaoSynthConfig, output: str | Path) -> dict:
    """Write the log under `output` (UserBehavior.csv or .parquet) + synth.json; returns its summary."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    lengths = user_lengths(cfg)
    ends = np.cumsum(lengths)
    path = out / f"UserBehavior.{cfg.file_format}"
    tmp = path.with_name(path.name + ".tmp")
    t0 = time.perf_counter()
    writer = None
    with open(tmp, "wb") as fh:
        first, index = 0, 0
        while first < lengths.size:
            last = int(np.searchsorted(ends, ends[first] - lengths[first] + cfg.block_events, side="right"))
            last = max(last, first + 1)
            df = block(cfg, index, first, lengths[first:last])
            if cfg.file_format == "csv":
                df.write_csv(fh, include_header=False)
            else:
                table = df.to_arrow()
                writer = writer or pq.ParquetWriter(fh, table.schema, compression="zstd")
                writer.write_table(table, row_group_size=1 << 20)
            first, index = last, index + 1
        if writer is not None:
            writer.close()
    tmp.replace(path)
    summary = {"path": str(path), "events": cfg.events, "users": cfg.num_users, "items": cfg.num_items,
               "categories": cfg.num_categories, "max_length": int(lengths.max()),
               "median_length": float(np.median(lengths)), "seconds": round(time.perf_counter() - t0, 1),
               "config": cfg.model_dump(mode="json")}
    (out / "synth.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def cli_generate(args) -> int:
    """`recsys data synth --format taobao --events N --output DIR [--seed S] [--users U] [--file-format parquet]`."""
    import sys

    from pydantic import ValidationError

    if args.events is None:
        print("recsys data synth --format taobao: --events is required", file=sys.stderr)
        return 2
    try:
        cfg = TaobaoSynthConfig(events=args.events, users=args.users, seed=args.seed or 0, file_format=args.file_format)
    except ValidationError as exc:
        print(f"recsys data synth: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(generate(cfg, args.output), indent=1))
    return 0
