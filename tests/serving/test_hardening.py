"""Issue 17's probes, each against today's behaviour: event order as in training, future timestamps,
event-id reuse, auth before the body, one error shape, history lengths, duplicate candidates."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import BatchSettings, ServingSettings
from tests.serving import models as M
from tests.serving.test_app import forward_probs

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}
K = M.RAW_ITEMS.tolist()
CANDS = M.RAW_ITEMS[[0, 5, 11, 40, 59]].tolist()


def make(tmp_path: Path, name: str = "sdim", window: int = 10_000, **kw) -> TestClient:
    settings = ServingSettings(store=f"sqlite:{tmp_path / 'state.sqlite3'}", token=TOKEN, max_candidates=100,
                               batch=BatchSettings(max_batch=8, max_wait_ms=1.0), **kw)
    return TestClient(create_app(settings, ctr=M.ctr_scorer(name, max_history=window, init_std=0.3)))


@pytest.fixture(params=["sdim", "dare"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    with make(tmp_path, request.param) as c:
        yield c


def send(c: TestClient, events: list[tuple[str, int, int, int]], **headers) -> dict:
    body = {"events": [{"event_id": e, "user_id": u, "item_id": i, "timestamp": t} for e, u, i, t in events]}
    r = c.post("/v1/events", json=body, headers={**AUTH, **headers})
    assert r.status_code == 200, r.text
    return r.json()


def score(c: TestClient, user: int, **extra) -> dict:
    r = c.post("/v1/score", json={"user_id": user, "candidates": CANDS, **extra})
    assert r.status_code == 200, r.text
    return r.json()


# -- 1. event order ------------------------------------------------------------------------------
def test_events_are_modelled_in_timestamp_order_whatever_the_arrival_order(client: TestClient) -> None:
    timeline = [(K[3], 10), (K[8], 20), (K[1], 30), (K[20], 40), (K[33], 50), (K[7], 60)]
    in_order = [(f"a{t}", 1, i, t) for i, t in timeline]
    send(client, in_order)
    expect = forward_probs(client, [i for i, _ in timeline], CANDS)
    np.testing.assert_allclose(score(client, 1)["scores"], expect, rtol=1e-5, atol=1e-6)
    # user 2: the newest half first (scored: its state is cached), then the late older half
    shuffled = [(f"b{t}", 2, i, t) for i, t in timeline]
    send(client, shuffled[3:])
    np.testing.assert_allclose(score(client, 2)["scores"], forward_probs(client, [i for i, _ in timeline[3:]], CANDS),
                               rtol=1e-5, atol=1e-6)
    send(client, [shuffled[1], shuffled[0], shuffled[2]])
    body = score(client, 2)  # the cached state was rebuilt in timestamp order, not advanced
    np.testing.assert_allclose(body["scores"], expect, rtol=1e-5, atol=1e-6)
    assert client.app.state.svc.store.history(2).timestamps.tolist() == [10, 20, 30, 40, 50, 60]
    send(client, [("b70", 2, K[9], 70)])  # and in-order events after that advance it again
    expect = forward_probs(client, [i for i, _ in timeline] + [K[9]], CANDS)
    np.testing.assert_allclose(score(client, 2)["scores"], expect, rtol=1e-5, atol=1e-6)


def test_future_timestamps_are_refused_naming_the_field(tmp_path: Path) -> None:
    now = int(time.time())
    with make(tmp_path, max_clock_skew_s=60) as c:
        assert c.post("/v1/events", json={"events": [{"event_id": "ok", "user_id": 1, "item_id": K[0], "timestamp": now + 30}]},
                      headers=AUTH).status_code == 200
        events = [{"event_id": "p", "user_id": 1, "item_id": K[0], "timestamp": now},
                  {"event_id": "f", "user_id": 1, "item_id": K[1], "timestamp": now + 3600}]
        r = c.post("/v1/events", json={"events": events}, headers=AUTH)
        assert r.status_code == 422 and "body.events.1.timestamp" in r.json()["message"] and "future" in r.json()["message"]
        assert not c.app.state.svc.store.has_event("p")  # nothing of the request stored
        r = c.post("/v1/score", json={"user_id": 1, "candidates": CANDS, "recent_events": [{"item_id": K[2], "timestamp": now + 3600}]})
        assert r.status_code == 422 and "body.recent_events.0.timestamp" in r.json()["message"]
    with make(tmp_path, max_clock_skew_s=None) as c:  # the check can be switched off
        assert c.post("/v1/events", json={"events": [events[1]]}, headers=AUTH).status_code == 200


# -- 2. event ids ----------------------------------------------------------------------------------
def test_event_id_reused_with_another_payload_is_409_naming_it(client: TestClient) -> None:
    send(client, [("x-1", 5, K[0], 10)])
    assert send(client, [("x-1", 5, K[0], 10)])["duplicates"] == ["x-1"]  # a retry: same payload
    for other in ([("x-1", 6, K[0], 10)], [("x-1", 5, K[1], 10)]):  # another user / another item
        body = {"events": [{"event_id": "new", "user_id": 5, "item_id": K[2], "timestamp": 11}] +
                [{"event_id": e, "user_id": u, "item_id": i, "timestamp": t} for e, u, i, t in other]}
        r = client.post("/v1/events", json=body, headers=AUTH)
        assert r.status_code == 409, r.text
        assert "body.events.1.event_id" in r.json()["message"] and "x-1" in r.json()["message"]
    store = client.app.state.svc.store
    assert not store.has_event("new") and store.history(6).items.tolist() == [] and store.history(5).items.tolist() == [K[0]]


# -- 4. auth before the body ------------------------------------------------------------------------
def test_token_is_checked_before_the_body_is_parsed(client: TestClient) -> None:
    for path in ("/v1/events", "/admin/reload"):
        for body in (b'{"events": [', b"\xff\xfe", b"[" * 5000):
            r = client.post(path, content=body, headers=JSON)
            assert r.status_code == 401 and "header.Authorization" in r.json()["message"], (path, body[:10], r.text)


# -- 5. one error shape ----------------------------------------------------------------------------
BAD_BODIES = [
    (b'{"user_id": 1, "candidates": [' + b"9" * 5000 + b"]}", 422, "body", "4300"),
    (b'{"user_id": 1, "candidates": [1010, "\xff"]}', 422, "body", "UTF-8"),
    (b'{"user_id": 1, "candidates": ' + b"[" * 3000 + b"]" * 3000 + b"}", 422, "body", "nested too deeply"),
    (b'{"user_id": 1, "candidates": [1010', 422, "body", "JSON decode error"),
]


@pytest.mark.parametrize(("body", "status", "loc", "what"), BAD_BODIES)
def test_unparsable_bodies_get_the_uniform_shape_naming_the_problem(tmp_path: Path, body: bytes, status: int, loc: str,
                                                                    what: str) -> None:
    with make(tmp_path, max_body_bytes=1 << 16) as c:
        for path, headers in (("/v1/score", JSON), ("/v1/events", {**JSON, **AUTH})):
            r = c.post(path, content=body, headers=headers)
            assert r.status_code == status, (path, r.text)
            out = r.json()
            assert set(out) == {"detail", "message"} and out["detail"][0]["loc"][0] == loc, out
            assert what in out["message"], out["message"]


@pytest.mark.parametrize(("headers", "what"), [({}, "missing"), ({"Content-Type": "text/plain"}, "'text/plain' is not supported"),
                                               ({"Content-Type": "application/x-www-form-urlencoded"}, "not supported")])
def test_content_type_is_named(client: TestClient, headers: dict[str, str], what: str) -> None:
    body = b'{"user_id": 1, "candidates": [1010]}'
    for path, extra in (("/v1/score", {}), ("/v1/events", AUTH)):
        r = client.post(path, content=body, headers={**headers, **extra})
        assert r.status_code == 415, r.text
        assert "header.Content-Type" in r.json()["message"] and what in r.json()["message"]


# -- 8. small things ------------------------------------------------------------------------------
def test_history_length_reports_stored_and_effective(tmp_path: Path) -> None:
    with make(tmp_path, window=6, store_max_history=50) as c:
        send(c, [(f"h{k}", 3, K[k], k) for k in range(4)])
        body = score(c, 3, recent_events=[{"item_id": K[10]}, {"item_id": K[11]}, {"item_id": K[12]}])
        assert body["history_length"] == 4 and body["effective_history_length"] == 6  # 4 stored + 3 recent, window 6
        plain = score(c, 3)
        assert plain["history_length"] == 4 and plain["effective_history_length"] == 4
        send(c, [(f"h{k}", 3, K[k], k) for k in range(4, 9)])
        assert score(c, 3)["history_length"] == 9 and score(c, 3)["effective_history_length"] == 6  # the model's window


def test_duplicate_unknown_candidates_listed_once(client: TestClient) -> None:
    r = client.post("/v1/score", json={"user_id": 1, "candidates": [999_999, K[1], 999_999, 5, 5, K[1]]})
    body = r.json()
    assert body["unknown_items"] == [999_999, 5]
    assert [s is None for s in body["scores"]] == [True, False, True, True, True, False]
