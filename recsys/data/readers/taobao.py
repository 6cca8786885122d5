"""Taobao UserBehavior csv (Tianchi dataset 649): `user,item,category,behavior_type,timestamp`,
no header. The behaviour type (pv/cart/fav/buy) is kept as `event_type`."""

from __future__ import annotations

from recsys.data.parsed import ReadResult
from recsys.data.readers.base import SourceConfig, read_lines, split_fixed

NAMES = ["user_id", "item_id", "category_id", "event_type", "timestamp"]


def read_userbehavior(cfg: SourceConfig) -> ReadResult:
    df = split_fixed(read_lines(cfg.path), ",", NAMES)
    return ReadResult(df, ("user_id", "item_id", "timestamp", "category_id", "event_type"))
