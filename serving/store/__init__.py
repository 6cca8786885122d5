"""User-state stores: a durable per-user event log plus cached per-user model state."""

from __future__ import annotations

from serving.store.base import AppendResult, Event, History, StateBlob, UserStore, open_store

__all__ = ["AppendResult", "Event", "History", "StateBlob", "UserStore", "open_store"]
