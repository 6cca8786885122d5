"""One store test suite, run against both backends (SQLite file, real redis-server)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from serving.store import Event, StateBlob, UserStore, open_store


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> UserStore:
    if request.param == "sqlite":
        s = open_store(f"sqlite:{tmp_path / 'state.sqlite3'}", max_history=5)
    else:
        from serving.store.redis import RedisStore

        url = request.getfixturevalue("redis_url")
        s = RedisStore(url, max_history=5, prefix=f"t{uuid.uuid4().hex}:")  # isolated key space per test
    yield s
    s.close()


def ev(eid: str, user: int, item: int, ts: int = 0, cat: int = -1) -> Event:
    return Event(event_id=eid, user_id=user, item_id=item, timestamp=ts, category_id=cat)


def test_append_and_read_in_order(store: UserStore) -> None:
    res = store.append([ev("a", 1, 10, 100, 7), ev("b", 1, 11, 101), ev("c", 2, 20, 5)])
    assert res.stored == ["a", "b", "c"] and res.duplicates == []
    h = store.history(1)
    assert h.items.tolist() == [10, 11] and h.categories.tolist() == [7, -1] and h.timestamps.tolist() == [100, 101]
    assert h.seq == 2 and store.seq(2) == 1 and store.num_users() == 2


def test_idempotent_on_event_id(store: UserStore) -> None:
    store.append([ev("a", 1, 10)])
    res = store.append([ev("a", 1, 10), ev("b", 1, 11), ev("b", 1, 11)])
    assert res.stored == ["b"] and res.duplicates == ["a", "b"]
    assert store.history(1).items.tolist() == [10, 11] and store.seq(1) == 2
    assert store.has_event("a") and not store.has_event("zz")


def test_history_capped_and_since(store: UserStore) -> None:
    store.append([ev(f"e{i}", 3, 100 + i) for i in range(8)])
    h = store.history(3)
    assert h.items.tolist() == [103, 104, 105, 106, 107] and h.seq == 8  # oldest evicted, max_history=5
    assert store.history(3, max_len=2).items.tolist() == [106, 107]
    assert store.history_since(3, 6).items.tolist() == [106, 107]
    assert store.history_since(3, 8).items.tolist() == []
    assert store.history_since(3, 0).items.tolist() == [103, 104, 105, 106, 107]  # evicted ones are gone


def test_unknown_user_is_empty(store: UserStore) -> None:
    h = store.history(999)
    assert len(h) == 0 and h.seq == 0 and store.seq(999) == 0


def test_bulk_load_only_into_empty_user(store: UserStore) -> None:
    items = np.arange(1, 8)
    assert store.bulk_load(4, items, np.full(7, 2), np.arange(7) * 10)
    h = store.history(4)
    assert h.items.tolist() == [3, 4, 5, 6, 7] and h.seq == 7 and h.categories.tolist() == [2] * 5
    assert not store.bulk_load(4, np.array([1]), np.array([1]), np.array([1]))
    store.append([ev("x", 4, 50, 70)])  # newer than the bootstrap history (timestamps 0..60)
    assert store.history(4).items.tolist() == [4, 5, 6, 7, 50] and store.seq(4) == 8


def test_state_blobs_keep_newest(store: UserStore) -> None:
    assert store.get_state(1, "m1") is None
    store.put_state(1, "m1", StateBlob(3, b"\x00three"))
    store.put_state(1, "m1", StateBlob(2, b"older"))
    assert store.get_state(1, "m1") == StateBlob(3, b"\x00three")
    store.put_state(1, "m1", StateBlob(4, b"four"))
    assert store.get_state(1, "m1") == StateBlob(4, b"four")
    assert store.get_state(1, "m2") is None


def test_concurrent_appends_lose_nothing(store: UserStore) -> None:
    def worker(t: int) -> None:
        for i in range(20):
            store.append([ev(f"{t}-{i}", 7, t * 100 + i), ev(f"{t}-{i}", 7, t * 100 + i)])

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert store.seq(7) == 80 and len(store.history(7)) == 5


def test_sqlite_seq_does_not_wait_for_a_writer(tmp_path: Path) -> None:
    """A warm /v1/score may read `seq` on the event loop: it must not queue behind an append that
    holds the write lock through its fsync (it reads the last committed value instead)."""
    import time

    s = open_store(f"sqlite:{tmp_path / 'state.sqlite3'}", max_history=5)
    try:
        s.append([ev("a", 1, 10), ev("b", 1, 11)])
        held, release = threading.Event(), threading.Event()

        def writer_in_commit() -> None:
            with s._lock:  # what append holds while it commits (fsync)
                held.set()
                release.wait(5)

        t = threading.Thread(target=writer_in_commit)
        t.start()
        held.wait(5)
        t0 = time.perf_counter()
        assert s.seq(1) == 2 and s.seq(99) == 0
        waited = time.perf_counter() - t0
        release.set()
        t.join()
        assert waited < 1.0, f"seq waited {waited:.2f} s for the writer"
        s.append([ev("c", 1, 12)])
        assert s.seq(1) == 3  # and sees the next commit
    finally:
        s.close()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_event_ids_deduplicate_within_the_window_and_are_forgotten_after(backend: str, tmp_path: Path,
                                                                         request: pytest.FixtureRequest) -> None:
    import time

    ttl = 0.4
    if backend == "sqlite":
        s = open_store(f"sqlite:{tmp_path / 'state.sqlite3'}", max_history=5, event_id_ttl_s=ttl)
    else:
        from serving.store.redis import RedisStore

        s = RedisStore(request.getfixturevalue("redis_url"), max_history=5, prefix=f"t{uuid.uuid4().hex}:", event_id_ttl_s=ttl)
    try:
        assert s.append([ev("a", 1, 10)]).stored == ["a"]
        assert s.append([ev("a", 1, 10)]).duplicates == ["a"] and s.has_event("a")  # a retry inside the window
        time.sleep(ttl + 0.3)
        assert not s.has_event("a")
        res = s.append([ev("a", 1, 11)])  # past the window: a new event (documented)
        assert res.stored == ["a"] and s.history(1).items.tolist() == [10, 11]
        assert s.append([ev("a", 1, 11)]).duplicates == ["a"]  # and deduplicated again from now on
    finally:
        s.close()


def test_sqlite_store_from_before_the_window_keeps_its_ids(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(str(path))
    db.execute("CREATE TABLE event_ids (event_id TEXT PRIMARY KEY) WITHOUT ROWID")
    db.execute("INSERT INTO event_ids VALUES ('old')")
    db.commit()
    db.close()
    s = open_store(f"sqlite:{path}", max_history=5)
    try:
        assert s.has_event("old") and s.append([ev("old", 1, 10)]).duplicates == ["old"]
    finally:
        s.close()


def test_events_are_kept_in_timestamp_order_and_late_events_are_marked(store: UserStore) -> None:
    """The build's rule: timestamp order, ties in arrival order; the newest max_history (5) by it are kept."""
    store.append([ev("a", 9, 10, 100), ev("b", 9, 11, 300), ev("c", 9, 12, 200)])  # c is late (200 < 300)
    h = store.history(9)
    assert h.items.tolist() == [10, 12, 11] and h.timestamps.tolist() == [100, 200, 300]
    assert h.seq == 3 and h.reordered_at == 3
    store.append([ev("d", 9, 13, 300)])  # a tie: after the event already stored at 300; not late
    assert store.history(9).items.tolist() == [10, 12, 11, 13] and store.history(9).reordered_at == 3
    store.append([ev("e", 9, 14, 50), ev("f", 9, 15, 400)])  # e is the oldest: the window (5) drops it
    h = store.history(9)
    assert h.items.tolist() == [10, 12, 11, 13, 15] and h.seq == 6 and h.reordered_at == 5
    store.append([ev("g", 9, 16, 150)])  # lands second; the oldest (10 at t=100) leaves the window
    h = store.history(9)
    assert h.items.tolist() == [16, 12, 11, 13, 15] and h.timestamps.tolist() == [150, 200, 300, 300, 400]
    assert store.history(9, max_len=2).items.tolist() == [13, 15] and h.reordered_at == 7


def test_event_id_reused_with_another_payload_is_a_conflict(store: UserStore) -> None:
    from serving.store.base import EventIdConflict

    store.append([ev("a", 1, 10, 5)])
    assert store.append([ev("a", 1, 10, 5)]).duplicates == ["a"]  # same payload: an idempotent retry
    for other in (ev("a", 2, 10, 5), ev("a", 1, 11, 5), ev("a", 1, 10, 6), ev("a", 1, 10, 5, cat=3)):
        with pytest.raises(EventIdConflict, match="event_id already stored with a different payload: a") as info:
            store.append([ev("n", 1, 20, 7), other])
        assert info.value.event_ids == ["a"]
    assert not store.has_event("n") and store.history(1).items.tolist() == [10] and store.seq(1) == 1  # nothing stored
    with pytest.raises(EventIdConflict):  # the same id twice in one request with different payloads
        store.append([ev("z", 1, 30, 8), ev("z", 1, 31, 8)])
    assert not store.has_event("z") and store.seq(1) == 1
