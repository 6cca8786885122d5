"""User-state stores: a durable per-user event log plus cached per-user model state.

`open_store` lives here, above both backends (base <- sqlite, redis <- this package), so no module
imports one that imports it back.
"""

from __future__ import annotations

from serving.store.base import DEFAULT_EVENT_ID_TTL_S, AppendResult, Event, History, StateBlob, UserStore
from serving.store.redis import RedisStore
from serving.store.sqlite import SQLiteStore

__all__ = ["AppendResult", "Event", "History", "StateBlob", "UserStore", "open_store"]


def open_store(url: str, max_history: int = 10_000, event_id_ttl_s: float | None = DEFAULT_EVENT_ID_TTL_S) -> UserStore:
    """`sqlite:PATH` (embedded default) or `redis://host:port/db`. Event ids deduplicate appends
    for `event_id_ttl_s` seconds after their first append (None = forever, unbounded storage)."""
    if url.startswith("sqlite:"):
        path = url[len("sqlite:") :]
        if not path:
            raise ValueError("store: sqlite URL needs a path, e.g. sqlite:state.sqlite3")
        return SQLiteStore(path, max_history=max_history, event_id_ttl_s=event_id_ttl_s)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url, max_history=max_history, event_id_ttl_s=event_id_ttl_s)
    raise ValueError(f"store: unsupported URL {url!r} (use sqlite:PATH or redis://host:port/db)")
