"""Per-user model state cache (the BSE idea: the CTR side gets a fixed-size per-user state and
scoring cost does not grow with history length).

Lookup order for (model, user): in-process LRU -> state blob in the store (shared by replicas)
-> encode the retained history from scratch. Every state carries the user's store `version`
(events ever appended, store/base.py) it reflects; when the user's version moved on (new events,
possibly via another replica), only the missing tail
is applied with `append_to_state`. If more events arrived than the store retains, the state is
rebuilt from the retained history (which is exactly what a capped history means); so is a
state from before a late event (one older than events already stored: it changes the order).
Both paths define the state the same way: the model's known items among the last `max_history`
stored events (unknown items inside that window are skipped, and they still take window slots).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from serving.metrics import Metrics
from serving.models import VERSIONS_KEY, CTRScorer, State, clone_state, state_from_bytes, state_to_bytes
from serving.store.base import StateBlob, UserStore


@dataclass
class UserState:
    state: State
    version: int  # the user's store version reflected in `state`
    history_length: int  # retained events = min(version, max_history)


class StateCache:
    def __init__(self, store: UserStore, metrics: Metrics, capacity: int = 10_000) -> None:
        self.store = store
        self.metrics = metrics
        self.capacity = capacity
        self._lru: OrderedDict[tuple[str, int], UserState] = OrderedDict()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._lru.clear()

    def __len__(self) -> int:
        return len(self._lru)

    def _remember(self, key: tuple[str, int], us: UserState) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            old = self._lru.get(key)
            if old is None or old.version <= us.version:
                self._lru[key] = us
            self._lru.move_to_end(key)
            while len(self._lru) > self.capacity:
                self._lru.popitem(last=False)

    def contains(self, scorer: CTRScorer, user_id: int) -> bool:
        """Whether the in-process cache holds a state for the user (maybe behind the store: `get`
        catches it up). No I/O: safe to call on the event loop."""
        return (scorer.key, user_id) in self._lru

    def current(self, scorer: CTRScorer, user_id: int) -> UserState | None:
        """The cached state if it is at the user's current store version, else None (the caller
        resolves it with `get` in a worker thread). One O(1) `version` read and no history I/O:
        with the embedded store that read has its own connection and never waits behind a writer,
        so this is what a request scored on the event loop may call."""
        cached = self._touch((scorer.key, user_id))
        if cached is None or cached.version != self._store_version(user_id):
            return None
        self.metrics.state_cache.labels("hit").inc()
        return cached

    def _store_version(self, user_id: int) -> int:
        with self.metrics.store_op("version"):
            return self.store.version(user_id)

    def _touch(self, key: tuple[str, int]) -> UserState | None:
        """The cached entry (marked most recently used), or None."""
        with self._lock:
            cached = self._lru.get(key)
            if cached is not None:
                self._lru.move_to_end(key)
        return cached

    def get(self, scorer: CTRScorer, user_id: int, persist: bool = False) -> UserState:
        """The user's state at the user's current store version (blocking; call from a worker thread).
        `persist` writes a changed state back to the store (done after event appends)."""
        key = (scorer.key, user_id)
        version = self._store_version(user_id)
        cached = self._touch(key)
        if cached is not None and cached.version == version:
            self.metrics.state_cache.labels("hit").inc()
            return cached
        source = "catch_up"
        if cached is None or cached.version > version:
            cached = None
            with self.metrics.store_op("get_state"):
                blob = self.store.get_state(user_id, scorer.key)
            state = scorer.to_device(state_from_bytes(blob.data)) if blob is not None and blob.version <= version else None
            if blob is not None and state is not None and VERSIONS_KEY in state:  # else: older format, re-encode
                cached = UserState(state, blob.version, min(blob.version, self.store.max_history))
                source = "store"
        us = self._advance(scorer, user_id, cached, version)
        self.metrics.state_cache.labels(source if cached is not None else "encode").inc()
        self._remember(key, us)
        if persist:
            with self.metrics.store_op("put_state"):
                self.store.put_state(user_id, scorer.key, StateBlob(us.version, state_to_bytes(us.state)))
        return us

    def _advance(self, scorer: CTRScorer, user_id: int, cached: UserState | None, version: int) -> UserState:
        if cached is not None:
            with self.metrics.store_op("history_since"):
                tail = self.store.history_since(user_id, cached.version)
            # no gap and no late event since the cached state (which would have shifted the
            # positions of events the state holds): apply just the new events
            if tail.version - cached.version == len(tail) and tail.reordered_at <= cached.version:
                # clone: a concurrent request may be scoring with the cached state right now
                window = min(scorer.max_history, self.store.max_history)  # the events a fresh encode reads
                state = scorer.append(clone_state(cached.state), tail, window) if len(tail) else cached.state
                return UserState(state, tail.version, min(tail.version, self.store.max_history))
        with self.metrics.store_op("history"):
            h = self.store.history(user_id, scorer.max_history)
        return UserState(scorer.encode(h), h.version, len(h))
