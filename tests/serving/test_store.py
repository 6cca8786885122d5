"""One store test suite, run against both backends (SQLite file, real redis-server)."""

from __future__ import annotations

import threading
from typing import Any
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
    assert h.version == 2 and store.version(2) == 1 and store.num_users() == 2


def test_idempotent_on_event_id(store: UserStore) -> None:
    store.append([ev("a", 1, 10)])
    res = store.append([ev("a", 1, 10), ev("b", 1, 11), ev("b", 1, 11)])
    assert res.stored == ["b"] and res.duplicates == ["a", "b"]
    assert store.history(1).items.tolist() == [10, 11] and store.version(1) == 2
    assert store.has_event("a") and not store.has_event("zz")


def test_history_capped_and_since(store: UserStore) -> None:
    store.append([ev(f"e{i}", 3, 100 + i) for i in range(8)])
    h = store.history(3)
    assert h.items.tolist() == [103, 104, 105, 106, 107] and h.version == 8  # oldest evicted, max_history=5
    assert store.history(3, max_len=2).items.tolist() == [106, 107]
    assert store.history_since(3, 6).items.tolist() == [106, 107]
    assert store.history_since(3, 8).items.tolist() == []
    assert store.history_since(3, 0).items.tolist() == [103, 104, 105, 106, 107]  # evicted ones are gone


def test_unknown_user_is_empty(store: UserStore) -> None:
    h = store.history(999)
    assert len(h) == 0 and h.version == 0 and store.version(999) == 0


def test_bulk_load_only_into_empty_user(store: UserStore) -> None:
    items = np.arange(1, 8)
    assert store.bulk_load(4, items, np.full(7, 2), np.arange(7) * 10)
    h = store.history(4)
    assert h.items.tolist() == [3, 4, 5, 6, 7] and h.version == 7 and h.categories.tolist() == [2] * 5
    assert not store.bulk_load(4, np.array([1]), np.array([1]), np.array([1]))
    store.append([ev("x", 4, 50, 70)])  # newer than the bootstrap history (timestamps 0..60)
    assert store.history(4).items.tolist() == [4, 5, 6, 7, 50] and store.version(4) == 8


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
    assert store.version(7) == 80 and len(store.history(7)) == 5


def test_sqlite_version_does_not_wait_for_a_writer(tmp_path: Path) -> None:
    """A warm /v1/score may read `version` on the event loop: it must not queue behind an append that
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
        assert s.version(1) == 2 and s.version(99) == 0
        waited = time.perf_counter() - t0
        release.set()
        t.join()
        assert waited < 1.0, f"version waited {waited:.2f} s for the writer"
        s.append([ev("c", 1, 12)])
        assert s.version(1) == 3  # and sees the next commit
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
    assert h.version == 3 and h.reordered_at == 3
    store.append([ev("d", 9, 13, 300)])  # a tie: after the event already stored at 300; not late
    assert store.history(9).items.tolist() == [10, 12, 11, 13] and store.history(9).reordered_at == 3
    store.append([ev("e", 9, 14, 50), ev("f", 9, 15, 400)])  # e is the oldest: the window (5) drops it
    h = store.history(9)
    assert h.items.tolist() == [10, 12, 11, 13, 15] and h.version == 6 and h.reordered_at == 5
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
        assert info.value.event_ids == ["a"] and info.value.positions == [1]
    assert not store.has_event("n") and store.history(1).items.tolist() == [10] and store.version(1) == 1  # nothing stored
    with pytest.raises(EventIdConflict) as info:  # the same id twice in one request with different payloads
        store.append([ev("z", 1, 30, 8), ev("y", 1, 32, 8), ev("z", 1, 31, 8)])
    assert info.value.event_ids == ["z"] and info.value.positions == [2]  # the later one is the conflict
    assert not store.has_event("z") and store.version(1) == 1


def test_reads_match_the_builds_order_through_late_events(store: UserStore) -> None:
    """history(max_len) and history_since against a reference of the build's rule (every stored
    event sorted by (timestamp, arrival), the newest max_history=5 kept), over mostly in-order
    appends with late events at varying distances: covers both the read by arrival range (no late
    event among the newest max_len) and the read in time order (a late one among them)."""
    rng = np.random.default_rng(7)
    for user in range(1, 5):
        kept: list[tuple[int, int, int]] = []  # (timestamp, version, item)
        version, newest_ts, reordered_at = 0, 0, 0
        for batch in range(25):
            events = []
            for _ in range(int(rng.integers(1, 4))):
                late = rng.random() < 0.15
                ts = int(newest_ts - rng.integers(0, 40)) if late else int(newest_ts + rng.integers(0, 3))
                version += 1
                if version > 1 and ts < newest_ts:
                    reordered_at = version
                newest_ts = max(newest_ts, ts)
                item = 1000 * user + version
                events.append(ev(f"u{user}-{version}", user, item, ts))
                kept.append((ts, version, item))
            store.append(events)
            kept = sorted(kept)[-5:]
            for max_len in (None, 1, 2, 4, 5, 8):
                h = store.history(user, max_len)
                want = kept if max_len is None else kept[-max_len:]
                assert h.items.tolist() == [i for _, _, i in want], (user, batch, max_len)
                assert h.timestamps.tolist() == [t for t, _, _ in want]
                assert (h.version, h.reordered_at) == (version, reordered_at)
            for since in range(max(0, version - 6), version + 1):
                t = store.history_since(user, since)
                assert t.timestamps.tolist() == sorted(t.timestamps.tolist()) and t.version == version  # always in time order
                if reordered_at <= since:  # the catch-up contract: exactly the events after `since`
                    assert t.items.tolist() == [i for _, s, i in kept if s > since], (user, batch, since)



LEGACY_TIMES = np.array([40, 10, 30, 20])  # one user's events, sent out of order before the upgrade


def legacy_user(scorer: Any) -> tuple[np.ndarray, Any, bytes]:
    """(raw items, the arrival-order History, the bytes of its state as the old version persisted it)."""
    from serving.models import state_to_bytes
    from serving.store.base import History
    from tests.serving import models as M

    items = M.RAW_ITEMS[[4, 9, 2, 30]]
    arrival = History(items, np.full(4, -1), LEGACY_TIMES, version=4)
    return items, arrival, state_to_bytes(scorer.encode(arrival))


def check_upgraded(s: UserStore, scorer: Any, arrival: Any, read_before_append: bool = True) -> None:
    """The upgraded store reads the user in timestamp order, and the state persisted in arrival
    order before the upgrade is rebuilt (not served, not advanced), then advanced from there."""
    from serving.metrics import Metrics
    from serving.state import StateCache
    from tests.serving import models as M

    dense = scorer.encode_items(M.RAW_ITEMS[:8])
    timed = arrival.items[np.argsort(arrival.timestamps, kind="stable")]
    assert not np.allclose(scorer.score(scorer.encode(arrival), dense),
                           scorer.score(scorer.encode(type(arrival)(timed, arrival.categories, np.sort(arrival.timestamps))), dense))

    def assert_state_matches_the_history() -> None:
        h = s.history(1)
        assert h.items.tolist()[:4] == timed.tolist() and h.timestamps.tolist() == sorted(h.timestamps.tolist())
        got = StateCache(s, Metrics()).get(scorer, 1)
        np.testing.assert_allclose(scorer.score(got.state, dense), scorer.score(scorer.encode(h), dense), rtol=1e-5, atol=1e-6)

    if read_before_append:
        assert_state_matches_the_history()
    s.append([ev("new", 1, int(M.RAW_ITEMS[7]), 50)])
    assert_state_matches_the_history()


def test_sqlite_store_from_before_timestamp_order_rebuilds_its_states(tmp_path: Path) -> None:
    """A store written by main 75a3438 (events in arrival order, no reorder_seq column), with a
    state blob persisted at the user's version (the on-disk column `seq`)."""
    import sqlite3

    from tests.serving import models as M

    scorer = M.ctr_scorer("dare", init_std=0.3)
    items, arrival, blob = legacy_user(scorer)
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(str(path))
    db.executescript("""
        CREATE TABLE users (user_id INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
        CREATE TABLE events (user_id INTEGER NOT NULL, seq INTEGER NOT NULL, item_id INTEGER NOT NULL,
            category_id INTEGER NOT NULL, ts INTEGER NOT NULL, event_type TEXT, event_id TEXT,
            PRIMARY KEY (user_id, seq)) WITHOUT ROWID;
        CREATE TABLE event_ids (event_id TEXT PRIMARY KEY, created REAL NOT NULL) WITHOUT ROWID;
        CREATE TABLE states (user_id INTEGER NOT NULL, model_key TEXT NOT NULL, seq INTEGER NOT NULL,
            data BLOB NOT NULL, PRIMARY KEY (user_id, model_key)) WITHOUT ROWID;""")
    db.executemany("INSERT INTO events VALUES (1,?,?,-1,?,NULL,?)",
                   [(k + 1, int(i), int(t), f"e{k}") for k, (i, t) in enumerate(zip(items, LEGACY_TIMES))])
    db.execute("INSERT INTO users VALUES (1, 4)")
    db.execute("INSERT INTO states VALUES (1, ?, 4, ?)", (scorer.key, blob))
    db.commit()
    db.close()
    s = open_store(f"sqlite:{path}", max_history=10)
    try:
        check_upgraded(s, scorer, arrival)
    finally:
        s.close()


@pytest.mark.parametrize("written", ["before_open", "after_open"])
def test_redis_store_from_before_timestamp_order_rebuilds_its_states(written: str, redis_url: str) -> None:
    """Keys as main 75a3438 wrote them (records in arrival order, no m:/r:) with a persisted state:
    migrated when the store is opened, or - keys written after that (an old replica still running
    during a rolling upgrade) - by the user's next append."""
    import redis as redis_client

    from serving.store.redis import RECORD, RedisStore
    from tests.serving import models as M

    scorer = M.ctr_scorer("dare", init_std=0.3)
    items, arrival, blob = legacy_user(scorer)
    prefix = f"t{uuid.uuid4().hex}:"
    r = redis_client.Redis.from_url(redis_url)

    def write_legacy() -> None:
        recs = np.empty(4, dtype=RECORD)
        recs["item"], recs["cat"], recs["ts"] = items, -1, LEGACY_TIMES
        r.set(f"{prefix}h:1", recs.tobytes())
        r.set(f"{prefix}s:1", 4)
        r.sadd(f"{prefix}users", 1)
        r.hset(f"{prefix}st:1:{scorer.key}", mapping={"seq": 4, "data": blob})

    if written == "before_open":
        write_legacy()
    s = RedisStore(redis_url, max_history=10, prefix=prefix)
    try:
        if written == "after_open":
            write_legacy()
        check_upgraded(s, scorer, arrival, read_before_append=written == "before_open")
    finally:
        s.close()
        r.close()


def test_state_blob_under_the_old_versions_key_is_re_encoded(store: UserStore) -> None:
    """A state persisted before VERSIONS_KEY was named (its event versions under the old key
    "serving.event_seqs" only) is not served nor advanced: the cache re-encodes the history."""
    from serving.metrics import Metrics
    from serving.models import VERSIONS_KEY, state_from_bytes, state_to_bytes
    from serving.state import StateCache
    from tests.serving import models as M

    scorer = M.ctr_scorer("dare", init_std=0.3)
    raw = M.RAW_ITEMS.tolist()
    store.append([ev(f"o{i}", 1, raw[i], i) for i in range(4)])
    old = scorer.encode(store.history(1))
    old["serving.event_seqs"] = old.pop(VERSIONS_KEY)
    store.put_state(1, scorer.key, StateBlob(4, state_to_bytes(old)))
    metrics = Metrics()
    got = StateCache(store, metrics).get(scorer, 1, persist=True)

    def lookups(outcome: str) -> float | None:
        return metrics.registry.get_sample_value("recsys_state_cache_total", {"outcome": outcome})

    assert lookups("encode") == 1 and lookups("store") is None  # not served from the store
    assert VERSIONS_KEY in got.state and "serving.event_seqs" not in got.state and got.version == 4
    dense = scorer.encode_items(M.RAW_ITEMS[:8])
    np.testing.assert_allclose(scorer.score(got.state, dense), scorer.score(scorer.encode(store.history(1)), dense),
                               rtol=1e-5, atol=1e-6)
    store.append([ev("o4", 1, raw[4], 4)])  # and it advances from there, persisted in the new format
    got = StateCache(store, Metrics()).get(scorer, 1, persist=True)
    assert got.version == 5 and VERSIONS_KEY in state_from_bytes(store.get_state(1, scorer.key).data)
