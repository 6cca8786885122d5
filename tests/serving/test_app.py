"""API behaviour with real (small, freshly initialised) SDIM/DARE/SASRec models on the SQLite store."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from recsys.models.ctr_common import single_user_batch
from serving.app import create_app
from serving.settings import BatchSettings, ServingSettings
from tests.serving import models as M

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_client(tmp_path: Path, name: str = "sdim", **overrides) -> TestClient:
    settings = ServingSettings(
        store=f"sqlite:{tmp_path / 'state.sqlite3'}", token=TOKEN, max_candidates=100, max_body_bytes=20_000,
        batch=BatchSettings(max_batch=8, max_wait_ms=1.0), **overrides,
    )
    return TestClient(create_app(settings, ctr=M.ctr_scorer(name), retriever=M.retriever()))


@pytest.fixture(params=["sdim", "dare"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path, request.param) as c:
        yield c


def post_events(c: TestClient, user: int, raw_items: list[int], prefix: str = "e", start: int = 0) -> dict:
    events = [{"event_id": f"{prefix}{user}-{start + k}", "user_id": user, "item_id": int(i), "timestamp": 100 + start + k}
              for k, i in enumerate(raw_items)]
    r = c.post("/v1/events", json={"events": events}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def forward_probs(c: TestClient, hist_raw: list[int], cand_raw: list[int]) -> np.ndarray:
    """The model's plain forward (no cached state) on the same history: the oracle."""
    scorer = c.app.state.svc.ctr
    hi = torch.from_numpy(scorer.encode_items(np.array(hist_raw)))
    hc = torch.from_numpy(scorer.item_cats[hi.numpy()])
    ci = torch.from_numpy(scorer.encode_items(np.array(cand_raw)))
    cc = torch.from_numpy(scorer.item_cats[ci.numpy()])
    with torch.inference_mode():
        return torch.sigmoid(scorer.model(single_user_batch(hi, hc, ci, cc))).numpy()


def test_score_matches_model_forward_and_tracks_new_events(client: TestClient) -> None:
    hist = M.RAW_ITEMS[[3, 9, 4, 20, 33, 7, 8]].tolist()
    cands = M.RAW_ITEMS[[0, 5, 11, 40, 59]].tolist()
    post_events(client, 7001, hist[:5])
    r = client.post("/v1/score", json={"user_id": 7001, "candidates": cands})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cold_start"] is False and body["history_length"] == 5 and body["unknown_items"] == []
    assert body["model"]["name"] == client.app.state.svc.ctr.info.name
    np.testing.assert_allclose(body["scores"], forward_probs(client, hist[:5], cands), rtol=1e-5, atol=1e-6)
    # two more events: the cached state advances incrementally and still equals the forward pass
    post_events(client, 7001, hist[5:], start=5)
    body = client.post("/v1/score", json={"user_id": 7001, "candidates": cands}).json()
    assert body["history_length"] == 7
    np.testing.assert_allclose(body["scores"], forward_probs(client, hist, cands), rtol=1e-5, atol=1e-6)


def test_recent_events_apply_to_this_request_only(client: TestClient) -> None:
    post_events(client, 7002, M.RAW_ITEMS[:4].tolist())
    cands = M.RAW_ITEMS[10:15].tolist()
    recent = [{"item_id": int(M.RAW_ITEMS[30])}, {"item_id": int(M.RAW_ITEMS[31]), "timestamp": 5}]
    with_recent = client.post("/v1/score", json={"user_id": 7002, "candidates": cands, "recent_events": recent}).json()
    expect = forward_probs(client, M.RAW_ITEMS[[0, 1, 2, 3, 30, 31]].tolist(), cands)
    np.testing.assert_allclose(with_recent["scores"], expect, rtol=1e-5, atol=1e-6)
    plain = client.post("/v1/score", json={"user_id": 7002, "candidates": cands}).json()
    assert plain["history_length"] == 4
    np.testing.assert_allclose(plain["scores"], forward_probs(client, M.RAW_ITEMS[:4].tolist(), cands), rtol=1e-5, atol=1e-6)


def test_unknown_candidates_get_null_and_are_listed(client: TestClient) -> None:
    cands = [int(M.RAW_ITEMS[1]), 999_999, int(M.RAW_ITEMS[2]), 5]
    body = client.post("/v1/score", json={"user_id": 7003, "candidates": cands}).json()
    assert body["unknown_items"] == [999_999, 5]
    assert body["scores"][1] is None and body["scores"][3] is None
    assert all(isinstance(body["scores"][i], float) for i in (0, 2))


def test_cold_start_user_scored_with_empty_history(client: TestClient) -> None:
    cands = M.RAW_ITEMS[:3].tolist()
    body = client.post("/v1/score", json={"user_id": 123456, "candidates": cands}).json()
    assert body["cold_start"] is True and body["history_length"] == 0
    np.testing.assert_allclose(body["scores"], forward_probs(client, [], cands), rtol=1e-5, atol=1e-6)
    r = client.post("/v1/recommend", json={"user_id": 123456, "k": 3})
    assert r.status_code == 404 and "user_id" in r.json()["message"]


def test_events_idempotent_and_durable_in_store(client: TestClient) -> None:
    first = post_events(client, 7004, M.RAW_ITEMS[:3].tolist())
    assert first["stored"] == ["e7004-0", "e7004-1", "e7004-2"] and first["duplicates"] == []
    again = post_events(client, 7004, M.RAW_ITEMS[:3].tolist())
    assert again["stored"] == [] and again["duplicates"] == ["e7004-0", "e7004-1", "e7004-2"]
    unknown = post_events(client, 7004, [424242], prefix="u", start=3)  # timestamp 103: the newest event
    assert unknown["stored"] == ["u7004-3"] and unknown["unknown_items"] == [424242]
    store = client.app.state.svc.store
    assert store.history(7004).items.tolist() == M.RAW_ITEMS[:3].tolist() + [424242]
    body = client.post("/v1/score", json={"user_id": 7004, "candidates": M.RAW_ITEMS[:2].tolist()}).json()
    np.testing.assert_allclose(body["scores"], forward_probs(client, M.RAW_ITEMS[:3].tolist(), M.RAW_ITEMS[:2].tolist()), rtol=1e-5, atol=1e-6)


def test_recommend_reranks_retrieval_candidates(client: TestClient) -> None:
    seen = M.RAW_ITEMS[[1, 2, 3, 4]].tolist()
    post_events(client, 7005, seen)
    body = client.post("/v1/recommend", json={"user_id": 7005, "k": 5, "exclude_seen": True}).json()
    items = body["items"]
    assert len(items) == 5 and not set(seen) & {x["item_id"] for x in items}
    ctr = [x["ctr_score"] for x in items]
    assert ctr == sorted(ctr, reverse=True)
    # the CTR scores are the model's on the user's history; the retrieval scores are faiss inner products
    np.testing.assert_allclose(ctr, forward_probs(client, seen, [x["item_id"] for x in items]), rtol=1e-5, atol=1e-6)
    retr = client.app.state.svc.retriever
    raw, scores = retr.candidates(client.app.state.svc.store.history(7005), 200, set(seen))
    lookup = dict(zip(raw.tolist(), scores.tolist()))
    assert all(abs(lookup[x["item_id"]] - x["retrieval_score"]) < 1e-5 for x in items)
    with_seen = client.post("/v1/recommend", json={"user_id": 7005, "k": 60, "exclude_seen": False}).json()
    assert set(seen) <= {x["item_id"] for x in with_seen["items"]}


def test_auth_on_write_and_admin_and_optional_reads(tmp_path: Path) -> None:
    ev = {"events": [{"event_id": "a1", "user_id": 1, "item_id": int(M.RAW_ITEMS[0]), "timestamp": 1}]}
    with make_client(tmp_path, require_token_for_reads=True) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            r = c.post("/v1/events", json=ev, headers=headers)
            assert r.status_code == 401 and "Authorization" in r.json()["message"], r.text
        assert c.post("/admin/reload", json={"model_dir": "/nope"}).status_code == 401
        assert c.post("/v1/score", json={"user_id": 1, "candidates": [1]}).status_code == 401
        assert c.post("/v1/score", json={"user_id": 1, "candidates": [1]}, headers=AUTH).status_code == 200
        assert c.post("/v1/events", json=ev, headers=AUTH).status_code == 200


def test_no_token_configured_refuses_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECSYS_SERVING_TOKEN", raising=False)
    settings = ServingSettings(store=f"sqlite:{tmp_path / 's.sqlite3'}")
    with TestClient(create_app(settings, ctr=M.ctr_scorer())) as c:
        r = c.post("/v1/events", json={"events": [{"event_id": "x", "user_id": 1, "item_id": 1, "timestamp": 1}]}, headers=AUTH)
        assert r.status_code == 401 and "no token configured" in r.json()["message"]
    monkeypatch.setenv("RECSYS_SERVING_TOKEN", TOKEN)
    with TestClient(create_app(settings, ctr=M.ctr_scorer())) as c:
        r = c.post("/v1/events", json={"events": [{"event_id": "x", "user_id": 1, "item_id": 1, "timestamp": 1}]}, headers=AUTH)
        assert r.status_code == 200


def test_failed_reload_keeps_serving_the_old_model(client: TestClient, tmp_path: Path) -> None:
    cands = M.RAW_ITEMS[:3].tolist()
    before = client.post("/v1/score", json={"user_id": 1, "candidates": cands}).json()
    bad = tmp_path / "not_a_model"
    bad.mkdir()
    (bad / "weights.safetensors").write_bytes(b"garbage")
    for model_dir in (str(tmp_path / "missing"), str(bad)):
        r = client.post("/admin/reload", json={"model_dir": model_dir}, headers=AUTH)
        assert r.status_code == 422 and "model_dir" in r.json()["message"] and "previous model" in r.json()["message"], r.text
    after = client.post("/v1/score", json={"user_id": 1, "candidates": cands}).json()
    assert after == before


def test_health_ready_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["detail"]["store"] is True
    client.post("/v1/score", json={"user_id": 1, "candidates": [int(M.RAW_ITEMS[0])]})
    client.post("/v1/score", json={"user_id": 1, "candidates": "x"})
    text = client.get("/metrics").text
    assert 'recsys_requests_total{endpoint="/v1/score",method="POST",status="200"} 1.0' in text
    assert 'recsys_requests_total{endpoint="/v1/score",method="POST",status="422"} 1.0' in text
    assert "recsys_request_latency_seconds_bucket" in text and "recsys_batch_size_count 1.0" in text
    assert 'recsys_store_latency_seconds_count{op="version"}' in text
    assert client.get("/docs").status_code == 200 and "/v1/score" in client.get("/openapi.json").json()["paths"]


def test_readyz_not_ready_without_ctr_model(tmp_path: Path) -> None:
    with TestClient(create_app(ServingSettings(store=f"sqlite:{tmp_path / 's.sqlite3'}", token=TOKEN))) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["detail"]["ctr_model"] is None
        assert c.post("/v1/score", json={"user_id": 1, "candidates": [1]}).status_code == 503


def test_warm_score_path_reads_only_the_event_count(client: TestClient) -> None:
    """With the user's state cached, a score request costs one O(1) store read (the event count),
    never the history; events appended by another writer (another replica) are still picked up."""
    from serving.schemas import ScoreResponse
    from serving.store.base import Event

    reg = client.app.state.svc.metrics.registry

    def ops(op: str) -> float:
        return reg.get_sample_value("recsys_store_latency_seconds_count", {"op": op}) or 0.0

    hist = M.RAW_ITEMS[[2, 6, 9, 12]].tolist()
    cands = M.RAW_ITEMS[[0, 5, 11]].tolist()
    post_events(client, 7010, hist)
    client.post("/v1/score", json={"user_id": 7010, "candidates": cands})  # warm-up: cache filled
    before = {op: ops(op) for op in ("version", "history", "history_since", "get_state")}
    for _ in range(5):
        r = client.post("/v1/score", json={"user_id": 7010, "candidates": cands})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        ScoreResponse.model_validate(r.json())  # the documented schema, although serialised directly
    assert ops("version") - before["version"] == 5
    assert all(ops(op) == before[op] for op in ("history", "history_since", "get_state"))
    extra = int(M.RAW_ITEMS[40])
    client.app.state.svc.store.append([Event("other-replica-1", 7010, extra, 999)])  # not through this app
    body = client.post("/v1/score", json={"user_id": 7010, "candidates": cands}).json()
    assert body["history_length"] == 5 and ops("history_since") == before["history_since"] + 1
    np.testing.assert_allclose(body["scores"], forward_probs(client, hist + [extra], cands), rtol=1e-5, atol=1e-6)



@pytest.mark.parametrize("name", ["sdim", "dare"])
def test_cached_state_matches_fresh_encode_with_unknown_items_past_max_history(tmp_path: Path, name: str) -> None:
    """The window is the last `max_history` stored EVENTS; unknown items inside it are skipped but
    still take a slot. The incrementally advanced (cached) state must score exactly like a fresh
    encode of the same stored window, also when unknown events alone push known items out."""
    window, user = 6, 7020
    k = M.RAW_ITEMS.tolist()
    known_raw = set(k)
    batches = [[k[1], k[2], k[3], 900_001, k[4], k[5]],  # 6 events, 5 known
               [k[6], 900_002],                          # k1, k2 leave the window (4 known stay, not 6)
               [900_003, 900_004],                       # no known item arrives; k3, k4 leave
               [900_005, 900_006, 900_007, 900_008],     # every known item leaves: window all unknown
               [k[7], k[8], 900_009, k[9]]]
    cands = M.RAW_ITEMS[[0, 5, 11, 40, 59]].tolist()
    settings = ServingSettings(store=f"sqlite:{tmp_path / 'state.sqlite3'}", token=TOKEN, max_history=window,
                               batch=BatchSettings(max_batch=8, max_wait_ms=1.0))
    with TestClient(create_app(settings, ctr=M.ctr_scorer(name, max_history=window, init_std=0.3))) as c:
        svc = c.app.state.svc
        scorer = svc.ctr

        def encodes() -> float:
            return svc.metrics.registry.get_sample_value("recsys_state_cache_total", {"source": "encode"}) or 0.0

        sent: list[int] = []
        for n, batch in enumerate(batches):
            before = encodes()
            post_events(c, user, batch, start=len(sent))
            sent += batch
            cached = c.post("/v1/score", json={"user_id": user, "candidates": cands}).json()
            if n > 0:  # the state was advanced incrementally, never re-encoded from the history
                assert encodes() == before
            stored = svc.store.history(user, window)
            assert stored.items.tolist() == sent[-window:] and cached["history_length"] == window
            fresh = scorer.score(scorer.encode(stored), scorer.encode_items(np.array(cands)))  # fresh encode
            np.testing.assert_allclose(cached["scores"], fresh, rtol=1e-5, atol=1e-6)
            known = [i for i in sent[-window:] if i in known_raw]
            np.testing.assert_allclose(cached["scores"], forward_probs(c, known, cands), rtol=1e-5, atol=1e-6)
        # request-only recent events follow the same window rule
        recent = [900_010, k[10], 900_011]
        body = c.post("/v1/score", json={"user_id": user, "candidates": cands,
                                         "recent_events": [{"item_id": i} for i in recent]}).json()
        win = (sent + recent)[-window:]
        np.testing.assert_allclose(body["scores"], forward_probs(c, [i for i in win if i in known_raw], cands),
                                   rtol=1e-5, atol=1e-6)


def test_only_a_current_cached_state_is_handed_to_the_event_loop(tmp_path: Path) -> None:
    """`StateCache.current` (what a request scored on the event loop may use) returns the cached
    state only while it is at the user's store version; behind the store (events appended after caching)
    it returns None, so the catch-up (history read, may wait for a writer) runs in a worker thread."""
    from serving.metrics import Metrics
    from serving.state import StateCache
    from serving.store import Event, open_store

    store = open_store(f"sqlite:{tmp_path / 'state.sqlite3'}", max_history=50)
    scorer = M.ctr_scorer("sdim")
    raw = M.RAW_ITEMS.tolist()
    try:
        cache = StateCache(store, Metrics())
        store.append([Event(event_id=f"e{i}", user_id=5, item_id=raw[i], timestamp=i) for i in range(3)])
        assert cache.current(scorer, 5) is None  # nothing cached yet
        us = cache.get(scorer, 5)
        assert cache.current(scorer, 5) is us and us.version == 3
        store.append([Event(event_id="e3", user_id=5, item_id=raw[3], timestamp=3)])
        assert cache.current(scorer, 5) is None  # behind the store: not for the event loop
        assert cache.get(scorer, 5).version == 4 and cache.current(scorer, 5).version == 4
    finally:
        store.close()
