"""The user-state store interface.

A store keeps, per raw user id,
- the event log: the user's behaviours (raw item id, raw category id or -1, timestamp) in
  timestamp order, ties in arrival order (the build's rule), of which the newest `max_history` by
  that order are kept, plus the user's `version` = the number of events ever appended (monotonic)
  and `reordered_at` = the version of the last late event (one older than an event already
  stored); model states computed at a version below it are rebuilt, not advanced;
- idempotency keys: every `event_id` acknowledged within the idempotency window, with its payload:
  a retry with the same payload is a duplicate, the same id with another payload a conflict;
- model state blobs: the serialised per-user model state (SDIM bucket tables, DARE/TWIN keys) for a
  model version, tagged with the user's (history) `version` it reflects, so replicas share it and
  nobody re-encodes a long history after a restart.

On disk the backends keep their original names, so existing stores still open: the persisted
field named `seq` is the version (SQLite columns `users.seq`, `events.seq`, `states.seq`; the Redis
key `s:<user>` and the state hash field `seq`), and `reordered_at` is stored as SQLite's
`users.reorder_seq` / Redis's `r:<user>`.

`append` returns only after the events are durable (SQLite: committed with synchronous=FULL;
Redis: as durable as the server's AOF setting - run it with `appendfsync always`).
Raw ids are stored (not dense ids) so the log outlives any model's vocabulary.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

NO_CATEGORY = -1


@dataclass(frozen=True)
class Event:
    event_id: str
    user_id: int
    item_id: int
    timestamp: int
    category_id: int = NO_CATEGORY
    event_type: str | None = None


@dataclass
class History:
    """A user's retained events in timestamp order (oldest first); `version` counts every event
    ever appended, so the events hold positions version-len+1..version of that order;
    `reordered_at` is the version of the user's last late event (0: none; version + 1 for a user
    migrated from arrival order): a state computed at a version below it is rebuilt, not advanced."""

    items: np.ndarray  # [L] int64 raw item ids
    categories: np.ndarray  # [L] int64 raw category ids, -1 when none
    timestamps: np.ndarray  # [L] int64
    version: int = 0
    reordered_at: int = 0

    def __len__(self) -> int:
        return int(self.items.size)

    @classmethod
    def empty(cls) -> "History":
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z.copy(), z.copy(), 0)

    def tail(self, since_version: int) -> "History":
        """Events at versions > since_version (those not yet reflected in a state at since_version)."""
        n = max(0, min(len(self), self.version - since_version))
        return History(self.items[len(self) - n :], self.categories[len(self) - n :], self.timestamps[len(self) - n :],
                       self.version, self.reordered_at)


@dataclass
class AppendResult:
    """Per request: event ids newly stored and those already stored before (idempotent retries)."""

    stored: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


class EventIdConflict(ValueError):
    """Event ids already stored (within the idempotency window) with a different payload; the
    append stored nothing."""

    def __init__(self, event_ids: list[str], positions: list[int] | None = None) -> None:
        super().__init__(f"event_id already stored with a different payload: {', '.join(event_ids)}")
        self.event_ids = event_ids
        #: index in the append's event list of each conflicting event (the later one of an id sent
        #: twice in one request with different payloads)
        self.positions = positions or []


PAYLOAD_VERSION = "v2"


def payload_key(ev: Event) -> str:
    """What an event id stands for: user, item, timestamp, category and type (compared on reuse)."""
    return f"{PAYLOAD_VERSION}|{ev.user_id}|{ev.item_id}|{ev.timestamp}|{ev.category_id}|{ev.event_type or ''}"


@dataclass(frozen=True)
class StateBlob:
    """A serialised model state (safetensors bytes) for one user and model version, reflecting the
    user's history at `version` (the store's event counter, see History)."""

    version: int
    data: bytes


#: how long an event id deduplicates retried appends (the idempotency window): 7 days
DEFAULT_EVENT_ID_TTL_S = 7 * 24 * 3600.0


class UserStore(abc.ABC):
    """Durable user event log + shared model-state cache. Methods are blocking (call them from a
    worker thread in async code); implementations are thread-safe."""

    max_history: int
    #: in-process (no network round trip per call): reads may run on the event loop
    embedded: bool = False

    @abc.abstractmethod
    def append(self, events: list[Event]) -> AppendResult:
        """Store events durably, skipping event ids already stored with the same payload; returns
        after fsync. Raises EventIdConflict (storing nothing) for ids stored with another payload."""

    @abc.abstractmethod
    def history(self, user_id: int, max_len: int | None = None) -> History:
        """The user's newest `max_len` (default all retained) events, in timestamp order; empty for unknown users."""

    @abc.abstractmethod
    def history_since(self, user_id: int, since_version: int) -> History:
        """Retained events at versions > since_version, in timestamp order (the catch-up for a cached
        state at since_version; valid as a tail only when `reordered_at` <= since_version)."""

    @abc.abstractmethod
    def version(self, user_id: int) -> int:
        """The user's version: the number of events ever appended for the user (0 = unknown user)."""

    @abc.abstractmethod
    def has_event(self, event_id: str) -> bool: ...

    @abc.abstractmethod
    def bulk_load(self, user_id: int, items: np.ndarray, categories: np.ndarray, timestamps: np.ndarray) -> bool:
        """Load a bootstrap history for a user with no events yet (no event ids); False if the user
        already had events (nothing changed)."""

    @abc.abstractmethod
    def get_state(self, user_id: int, model_key: str) -> StateBlob | None: ...

    @abc.abstractmethod
    def put_state(self, user_id: int, model_key: str, blob: StateBlob) -> None:
        """Keep the blob unless a blob with a higher version is already stored."""

    @abc.abstractmethod
    def num_users(self) -> int: ...

    @abc.abstractmethod
    def ping(self) -> bool: ...

    @abc.abstractmethod
    def close(self) -> None: ...
