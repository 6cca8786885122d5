"""The embedded default store: one SQLite file in WAL mode with synchronous=FULL, so a commit
(and therefore an acknowledged `append`) survives a process kill or power loss. Event ids are
kept, with their payload, for `event_id_ttl_s` seconds after their first append (the idempotency
window), then pruned by the next append.

A user's events are read in timestamp order (ties in arrival order), the build's rule; the
newest `max_history` by that order are kept.

On disk, the persisted column named `seq` is the version (store/base.py): `users.seq` is the user's
version (events ever appended), `events.seq` the version at which an event was appended (its
arrival position) and `states.seq` the version a state blob reflects. `users.reorder_seq` is the
History's `reordered_at`: the version of the user's last late event (one older than an event
already stored), which invalidates states computed before it. These column names predate the
Python names and are kept so existing store files still open."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from serving.store.base import (
    DEFAULT_EVENT_ID_TTL_S,
    NO_CATEGORY,
    AppendResult,
    Event,
    EventIdConflict,
    History,
    StateBlob,
    UserStore,
    payload_key,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (user_id INTEGER PRIMARY KEY, seq INTEGER NOT NULL,
    reorder_seq INTEGER NOT NULL DEFAULT 0, max_ts INTEGER, kept INTEGER);
CREATE TABLE IF NOT EXISTS events (
    user_id INTEGER NOT NULL, seq INTEGER NOT NULL, item_id INTEGER NOT NULL,
    category_id INTEGER NOT NULL, ts INTEGER NOT NULL, event_type TEXT, event_id TEXT,
    PRIMARY KEY (user_id, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_by_time ON events (user_id, ts, seq, item_id, category_id);  -- covering: reads in time order
CREATE TABLE IF NOT EXISTS event_ids (event_id TEXT PRIMARY KEY, created REAL NOT NULL, payload TEXT) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS event_ids_created ON event_ids (created);
CREATE TABLE IF NOT EXISTS states (
    user_id INTEGER NOT NULL, model_key TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (user_id, model_key)) WITHOUT ROWID;
"""


class SQLiteStore(UserStore):
    """Thread-safe (one connection behind a lock; SQLite serialises writers anyway)."""

    embedded = True

    def __init__(self, path: str | Path, max_history: int = 10_000, event_id_ttl_s: float | None = DEFAULT_EVENT_ID_TTL_S) -> None:
        self.path = Path(path)
        self.event_id_ttl_s = event_id_ttl_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_history = max_history
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0)
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"store: {self.path} could not be put in WAL mode (got {mode})")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()
        self._db.executescript(SCHEMA)
        # `version` (the one store read of a warm /v1/score, possibly on the event loop) uses its own
        # connection and lock: in WAL mode it reads the last committed value without waiting for a
        # writer that holds `_lock` through its fsync
        self._rlock = threading.Lock()
        self._rdb = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0)

    # -- events -----------------------------------------------------------------------------
    def append(self, events: list[Event]) -> AppendResult:
        """Store new events durably; an id already stored with the same payload is a duplicate, with
        another payload the whole request is refused (EventIdConflict, nothing stored)."""
        result = AppendResult()
        conflicts: list[int] = []  # positions in `events`
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                if self.event_id_ttl_s is not None:  # ids past the idempotency window (index range scan)
                    db.execute("DELETE FROM event_ids WHERE created < ?", (now - self.event_id_ttl_s,))
                users: dict[int, list[int | None]] = {}  # user -> [version, reordered_at, max_ts, kept]
                for pos, ev in enumerate(events):
                    key = payload_key(ev)
                    row = db.execute("SELECT payload FROM event_ids WHERE event_id=?", (ev.event_id,)).fetchone()
                    if row is not None:
                        if row[0] is not None and row[0] != key:
                            conflicts.append(pos)
                        else:
                            result.duplicates.append(ev.event_id)
                        continue
                    db.execute("INSERT INTO event_ids VALUES (?,?,?)", (ev.event_id, now, key))
                    u = users.get(ev.user_id) or users.setdefault(ev.user_id, self._user_locked(ev.user_id))
                    u[0] = int(u[0] or 0) + 1
                    if u[2] is not None and ev.timestamp < u[2]:
                        u[1] = u[0]  # a late event: states from before it are rebuilt
                    u[2] = ev.timestamp if u[2] is None else max(u[2], ev.timestamp)
                    u[3] = int(u[3] or 0) + 1
                    db.execute(
                        "INSERT INTO events VALUES (?,?,?,?,?,?,?)",
                        (ev.user_id, u[0], ev.item_id, ev.category_id, ev.timestamp, ev.event_type, ev.event_id),
                    )
                    result.stored.append(ev.event_id)
                if conflicts:
                    raise EventIdConflict([events[k].event_id for k in conflicts], conflicts)
                for user, u in users.items():
                    self._evict_locked(user, u)
                    db.execute("INSERT INTO users VALUES (?,?,?,?,?) ON CONFLICT(user_id) DO UPDATE SET seq=excluded.seq, "
                               "reorder_seq=excluded.reorder_seq, max_ts=excluded.max_ts, kept=excluded.kept", (user, *u))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return result

    def _user_locked(self, user_id: int) -> list[int | None]:
        """[version, reordered_at, max_ts, kept] of a user (zeros for a new one; columns seq, reorder_seq)."""
        row = self._db.execute("SELECT seq, reorder_seq, max_ts, kept FROM users WHERE user_id=?", (user_id,)).fetchone()
        return [0, 0, None, 0] if row is None else list(row)

    def _evict_locked(self, user_id: int, u: list[int | None]) -> None:
        """Delete the user's oldest events (timestamp order) beyond max_history."""
        excess = int(u[3] or 0) - self.max_history
        if excess > 0:
            self._db.execute("DELETE FROM events WHERE user_id=? AND seq IN (SELECT seq FROM events WHERE user_id=? "
                             "ORDER BY ts, seq LIMIT ?)", (user_id, user_id, excess))
            u[3] = self.max_history

    def bulk_load(self, user_id: int, items: np.ndarray, categories: np.ndarray, timestamps: np.ndarray) -> bool:
        total = int(np.asarray(items).size)
        order = np.argsort(np.asarray(timestamps, dtype=np.int64), kind="stable")  # the build's order, kept
        items, categories, timestamps = (np.asarray(a, dtype=np.int64)[order][-self.max_history :]
                                         for a in (items, categories, timestamps))
        first = total - int(items.size) + 1  # version at which the oldest retained event counts
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if self._version_locked(user_id) > 0:
                    db.execute("ROLLBACK")
                    return False
                rows = ((user_id, first + k, int(i), int(c), int(t), None, None) for k, (i, c, t) in enumerate(zip(items, categories, timestamps)))
                db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?)", rows)
                max_ts = int(timestamps.max()) if timestamps.size else None
                db.execute("INSERT INTO users VALUES (?,?,?,?,?)", (user_id, total, 0, max_ts, int(items.size)))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return True

    def _migrate(self) -> None:
        """Add the columns of stores written by older versions: event_ids.created (= now, so their
        ids keep deduplicating for one full window) and .payload (NULL: not compared); users'
        reorder_seq (= reordered_at), max_ts and kept. reorder_seq = seq + 1 (the version + 1): their
        events were kept in arrival order, so every state computed before (persisted ones included,
        at their version) is rebuilt, in timestamp order."""
        adds = {
            "event_ids": [("created", f"REAL NOT NULL DEFAULT {time.time():.3f}"), ("payload", "TEXT")],
            "users": [("reorder_seq", "INTEGER NOT NULL DEFAULT 0"), ("max_ts", "INTEGER"), ("kept", "INTEGER")],
        }
        for table, columns in adds.items():
            have = [r[1] for r in self._db.execute(f"PRAGMA table_info({table})").fetchall()]
            for name, decl in columns:
                if have and name not in have:
                    try:  # one atomic statement; names and defaults are literals of this module (no user input)
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
                    except sqlite3.OperationalError as exc:  # another process migrated it first
                        if "duplicate column" not in str(exc):
                            raise
                    if table == "users" and name == "kept":
                        self._db.execute("UPDATE users SET reorder_seq=seq+1, kept=(SELECT COUNT(*) FROM events e WHERE "
                                         "e.user_id=users.user_id), max_ts=(SELECT MAX(ts) FROM events e WHERE e.user_id=users.user_id)")

    def _version_locked(self, user_id: int) -> int:
        row = self._db.execute("SELECT seq FROM users WHERE user_id=?", (user_id,)).fetchone()
        return int(row[0]) if row else 0

    def version(self, user_id: int) -> int:
        with self._rlock:
            row = self._rdb.execute("SELECT seq FROM users WHERE user_id=?", (user_id,)).fetchone()
        return int(row[0]) if row else 0

    def history(self, user_id: int, max_len: int | None = None) -> History:
        return self._read(user_id, 0, max_len)

    def history_since(self, user_id: int, since_version: int) -> History:
        return self._read(user_id, since_version, None)

    def _read(self, user_id: int, since_version: int, max_len: int | None) -> History:
        """Retained events at versions > since_version (a catch-up tail) or the newest `max_len`
        (None: all), in timestamp order. Without a late event among them - the common case - arrival
        order is time order and they are a primary-key range of `events.seq` (read as main's store
        did); else the time-order index gives them sorted."""
        with self._lock:
            row = self._db.execute("SELECT seq, reorder_seq, kept FROM users WHERE user_id=?", (user_id,)).fetchone()
            version, reorder, kept = (0, 0, None) if row is None else (int(row[0]), int(row[1]), row[2])
            n = kept if max_len is None else max_len  # the newest n events are wanted
            pk_from = since_version if since_version > 0 else None
            if pk_from is None and n is not None and (reorder == 0 or reorder <= version - n):
                pk_from = version - int(n)  # no late event among the newest n: versions version-n+1..version
            if pk_from is not None:
                rows = self._db.execute("SELECT item_id, category_id, ts FROM events WHERE user_id=? AND seq>? ORDER BY seq",
                                        (user_id, pk_from)).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT item_id, category_id, ts FROM events WHERE user_id=? ORDER BY ts DESC, seq DESC LIMIT ?",
                    (user_id, -1 if max_len is None else max_len),
                ).fetchall()[::-1]
        if not rows:
            return History(*(np.zeros(0, dtype=np.int64) for _ in range(3)), version=version, reordered_at=reorder)
        arr = np.asarray(rows, dtype=np.int64)
        if since_version > 0 and reorder > since_version:  # a late event in the tail: sort it (ties keep arrival order)
            arr = arr[np.argsort(arr[:, 2], kind="stable")]
        return History(arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy(), version, reorder)

    def has_event(self, event_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT created FROM event_ids WHERE event_id=?", (event_id,)).fetchone()
        return row is not None and (self.event_id_ttl_s is None or row[0] >= time.time() - self.event_id_ttl_s)

    # -- model state ------------------------------------------------------------------------
    def get_state(self, user_id: int, model_key: str) -> StateBlob | None:
        with self._lock:
            row = self._db.execute("SELECT seq, data FROM states WHERE user_id=? AND model_key=?", (user_id, model_key)).fetchone()
        return StateBlob(int(row[0]), bytes(row[1])) if row else None

    def put_state(self, user_id: int, model_key: str, blob: StateBlob) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO states VALUES (?,?,?,?) ON CONFLICT(user_id, model_key) DO UPDATE "
                "SET seq=excluded.seq, data=excluded.data WHERE excluded.seq > states.seq",
                (user_id, model_key, blob.version, blob.data),
            )

    # -- misc ------------------------------------------------------------------------------
    def num_users(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    def ping(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1").fetchone() == (1,)

    def close(self) -> None:
        with self._rlock:
            self._rdb.close()
        with self._lock:
            self._db.close()


__all__ = ["SQLiteStore", "NO_CATEGORY"]
