"""Per-user model state cache (the BSE idea: the CTR side gets a fixed-size per-user state and
scoring cost does not grow with history length).

Lookup order for (model, user): in-process LRU -> state blob in the store (shared by replicas)
-> encode the retained history from scratch. Every state carries the store `seq` it reflects;
when the user's seq moved on (new events, possibly via another replica), only the missing tail
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
from serving.models import SEQS_KEY, CTRScorer, State, clone_state, state_from_bytes, state_to_bytes
from serving.store.base import StateBlob, UserStore


@dataclass
class UserState:
    state: State
    seq: int  # store seq reflected in `state`
    history_length: int  # retained events = min(seq, max_history)


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
            if old is None or old.seq <= us.seq:
                self._lru[key] = us
            self._lru.move_to_end(key)
            while len(self._lru) > self.capacity:
                self._lru.popitem(last=False)

    def contains(self, scorer: CTRScorer, user_id: int) -> bool:
        """Whether the in-process cache holds a state for the user (maybe behind the store: `get`
        catches it up). No I/O: safe to call on the event loop."""
        return (scorer.key, user_id) in self._lru

    def current(self, scorer: CTRScorer, user_id: int) -> UserState | None:
        """The cached state if it is at the store's current seq, else None (the caller resolves it
        with `get` in a worker thread). One O(1) `seq` read and no history I/O: with the embedded
        store that read has its own connection and never waits behind a writer, so this is what a
        request scored on the event loop may call."""
        cached = self._touch((scorer.key, user_id))
        if cached is None or cached.seq != self._store_seq(user_id):
            return None
        self.metrics.state_cache.labels("hit").inc()
        return cached

    def _store_seq(self, user_id: int) -> int:
        with self.metrics.store_op("seq"):
            return self.store.seq(user_id)

    def _touch(self, key: tuple[str, int]) -> UserState | None:
        """The cached entry (marked most recently used), or None."""
        with self._lock:
            cached = self._lru.get(key)
            if cached is not None:
                self._lru.move_to_end(key)
        return cached

    def get(self, scorer: CTRScorer, user_id: int, persist: bool = False) -> UserState:
        """The user's state at the store's current seq (blocking; call from a worker thread).
        `persist` writes a changed state back to the store (done after event appends)."""
        key = (scorer.key, user_id)
        seq = self._store_seq(user_id)
        cached = self._touch(key)
        if cached is not None and cached.seq == seq:
            self.metrics.state_cache.labels("hit").inc()
            return cached
        source = "catch_up"
        if cached is None or cached.seq > seq:
            cached = None
            with self.metrics.store_op("get_state"):
                blob = self.store.get_state(user_id, scorer.key)
            state = scorer.to_device(state_from_bytes(blob.data)) if blob is not None and blob.seq <= seq else None
            if blob is not None and state is not None and SEQS_KEY in state:  # else: older format, re-encode
                cached = UserState(state, blob.seq, min(blob.seq, self.store.max_history))
                source = "store"
        us = self._advance(scorer, user_id, cached, seq)
        self.metrics.state_cache.labels(source if cached is not None else "encode").inc()
        self._remember(key, us)
        if persist:
            with self.metrics.store_op("put_state"):
                self.store.put_state(user_id, scorer.key, StateBlob(us.seq, state_to_bytes(us.state)))
        return us

    def _advance(self, scorer: CTRScorer, user_id: int, cached: UserState | None, seq: int) -> UserState:
        if cached is not None:
            with self.metrics.store_op("history_since"):
                tail = self.store.history_since(user_id, cached.seq)
            # no gap and no late event since the cached state (which would have shifted the
            # positions of events the state holds): apply just the new events
            if tail.seq - cached.seq == len(tail) and tail.reordered_at <= cached.seq:
                # clone: a concurrent request may be scoring with the cached state right now
                window = min(scorer.max_history, self.store.max_history)  # the events a fresh encode reads
                state = scorer.append(clone_state(cached.state), tail, window) if len(tail) else cached.state
                return UserState(state, tail.seq, min(tail.seq, self.store.max_history))
        with self.metrics.store_op("history"):
            h = self.store.history(user_id, scorer.max_history)
        return UserState(scorer.encode(h), h.seq, len(h))
