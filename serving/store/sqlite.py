"""The embedded default store: one SQLite file in WAL mode with synchronous=FULL, so a commit
(and therefore an acknowledged `append`) survives a process kill or power loss. Event ids are
kept for `event_id_ttl_s` seconds after their first append (the idempotency window), then pruned
by the next append."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from serving.store.base import DEFAULT_EVENT_ID_TTL_S, NO_CATEGORY, AppendResult, Event, History, StateBlob, UserStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (user_id INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    user_id INTEGER NOT NULL, seq INTEGER NOT NULL, item_id INTEGER NOT NULL,
    category_id INTEGER NOT NULL, ts INTEGER NOT NULL, event_type TEXT, event_id TEXT,
    PRIMARY KEY (user_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_ids (event_id TEXT PRIMARY KEY, created REAL NOT NULL) WITHOUT ROWID;
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
        self._migrate_event_ids()
        self._db.executescript(SCHEMA)
        # `seq` (the one store read of a warm /v1/score, possibly on the event loop) uses its own
        # connection and lock: in WAL mode it reads the last committed value without waiting for a
        # writer that holds `_lock` through its fsync
        self._rlock = threading.Lock()
        self._rdb = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0)

    # -- events -----------------------------------------------------------------------------
    def append(self, events: list[Event]) -> AppendResult:
        result = AppendResult()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                if self.event_id_ttl_s is not None:  # ids past the idempotency window (index range scan)
                    db.execute("DELETE FROM event_ids WHERE created < ?", (now - self.event_id_ttl_s,))
                seqs: dict[int, int] = {}
                for ev in events:
                    if db.execute("INSERT OR IGNORE INTO event_ids VALUES (?,?)", (ev.event_id, now)).rowcount == 0:
                        result.duplicates.append(ev.event_id)
                        continue
                    if ev.user_id not in seqs:
                        seqs[ev.user_id] = self._seq_locked(ev.user_id)
                    seqs[ev.user_id] += 1
                    db.execute(
                        "INSERT INTO events VALUES (?,?,?,?,?,?,?)",
                        (ev.user_id, seqs[ev.user_id], ev.item_id, ev.category_id, ev.timestamp, ev.event_type, ev.event_id),
                    )
                    result.stored.append(ev.event_id)
                for user, seq in seqs.items():
                    db.execute("INSERT INTO users VALUES (?,?) ON CONFLICT(user_id) DO UPDATE SET seq=excluded.seq", (user, seq))
                    db.execute("DELETE FROM events WHERE user_id=? AND seq<=?", (user, seq - self.max_history))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return result

    def bulk_load(self, user_id: int, items: np.ndarray, categories: np.ndarray, timestamps: np.ndarray) -> bool:
        total = int(np.asarray(items).size)
        items, categories, timestamps = (np.asarray(a, dtype=np.int64)[-self.max_history :] for a in (items, categories, timestamps))
        first = total - int(items.size) + 1  # seq of the oldest retained event
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if self._seq_locked(user_id) > 0:
                    db.execute("ROLLBACK")
                    return False
                rows = ((user_id, first + k, int(i), int(c), int(t), None, None) for k, (i, c, t) in enumerate(zip(items, categories, timestamps)))
                db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?)", rows)
                db.execute("INSERT INTO users VALUES (?,?)", (user_id, total))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return True

    def _migrate_event_ids(self) -> None:
        """Stores written before the idempotency window had event_ids(event_id) only: add `created`
        (= now, so their ids keep deduplicating for one full window)."""
        cols = [r[1] for r in self._db.execute("PRAGMA table_info(event_ids)").fetchall()]
        if cols and "created" not in cols:
            try:  # one atomic statement; the default is a numeric literal (no user input)
                self._db.execute(f"ALTER TABLE event_ids ADD COLUMN created REAL NOT NULL DEFAULT {time.time():.3f}")
            except sqlite3.OperationalError as exc:  # another process migrated it first
                if "duplicate column" not in str(exc):
                    raise

    def _seq_locked(self, user_id: int) -> int:
        row = self._db.execute("SELECT seq FROM users WHERE user_id=?", (user_id,)).fetchone()
        return int(row[0]) if row else 0

    def seq(self, user_id: int) -> int:
        with self._rlock:
            row = self._rdb.execute("SELECT seq FROM users WHERE user_id=?", (user_id,)).fetchone()
        return int(row[0]) if row else 0

    def history(self, user_id: int, max_len: int | None = None) -> History:
        return self._read(user_id, 0, max_len)

    def history_since(self, user_id: int, since_seq: int) -> History:
        return self._read(user_id, since_seq, None)

    def _read(self, user_id: int, since_seq: int, max_len: int | None) -> History:
        with self._lock:
            seq = self._seq_locked(user_id)
            lo = since_seq if max_len is None else max(since_seq, seq - max_len)
            rows = self._db.execute(
                "SELECT item_id, category_id, ts FROM events WHERE user_id=? AND seq>? ORDER BY seq", (user_id, lo)
            ).fetchall()
        if not rows:
            h = History.empty()
            h.seq = seq
            return h
        arr = np.asarray(rows, dtype=np.int64)
        return History(arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy(), seq)

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
                (user_id, model_key, blob.seq, blob.data),
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
