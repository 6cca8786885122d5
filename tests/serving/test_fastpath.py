"""The /v1/score fast path (serving/fastpath.py) answers exactly as the FastAPI route: the same
bytes for valid bodies, and every body it does not accept reaches the route unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.fastpath import plain_score_body
from serving.settings import ServingSettings
from tests.serving import models as M

AUTH = {"Authorization": "Bearer tok"}
JSON = {"Content-Type": "application/json"}
ITEMS = M.RAW_ITEMS.tolist()
BIG = 2**63


def make(tmp: Path, fast: bool) -> TestClient:
    settings = ServingSettings(store=f"sqlite:{tmp / f'fast{fast}.sqlite3'}", token="tok", max_candidates=50,
                               max_body_bytes=4096, fast_score_path=fast)
    return TestClient(create_app(settings, ctr=M.ctr_scorer()))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, TestClient]]:
    tmp = tmp_path_factory.mktemp("fast")
    with make(tmp, True) as fast, make(tmp, False) as slow:
        for c in (fast, slow):  # the same stored history on both
            events = [{"event_id": f"e{i}", "user_id": 7001, "item_id": x, "timestamp": i} for i, x in enumerate(ITEMS[:12])]
            assert c.post("/v1/events", json={"events": events}, headers=AUTH).status_code == 200
        yield fast, slow


def fast_path_counts(c: TestClient) -> dict[str, float]:
    out = {}
    for line in c.get("/metrics").text.splitlines():
        if line.startswith("recsys_fast_path_total{"):
            out[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
    return out


VALID = [
    json.dumps({"user_id": 7001, "candidates": ITEMS[:5]}),
    json.dumps({"user_id": 7001, "candidates": [ITEMS[0], 5, ITEMS[3], 0, BIG - 1]}),  # unknown ids -> null, listed
    json.dumps({"user_id": 999, "candidates": ITEMS[:50]}),  # cold start, exactly max_candidates
    json.dumps({"candidates": ITEMS[:3], "user_id": 7001, "context": None, "recent_events": []}),
    '{"user_id":7001 , "candidates" : [1010,1020]}',
]
# bodies the fast path passes on: invalid ones (4xx from the route) and valid-but-unusual ones
PASSED = [
    "", "{not json", "[1, 2]", "null", '"x"', "{}",
    '{"candidates": [1010]}', '{"user_id": 1}',
    '{"user_id": "7", "candidates": [1010]}', '{"user_id": true, "candidates": [1010]}',
    '{"user_id": 1.0, "candidates": [1010]}', '{"user_id": -1, "candidates": [1010]}',
    f'{{"user_id": {BIG}, "candidates": [1010]}}', f'{{"user_id": {2**64}, "candidates": [1010]}}',
    '{"user_id": 1, "candidates": []}', '{"user_id": 1, "candidates": "1010"}', '{"user_id": 1, "candidates": {"a": 1}}',
    '{"user_id": 1, "candidates": [1010, "x"]}', '{"user_id": 1, "candidates": [1010, true]}',
    '{"user_id": 1, "candidates": [1010, 2.5]}', '{"user_id": 1, "candidates": [1010, null]}',
    '{"user_id": 1, "candidates": [1010, -3]}', f'{{"user_id": 1, "candidates": [1010, {BIG}]}}',
    '{"user_id": 1, "candidates": [[1010]]}', json.dumps({"user_id": 1, "candidates": list(range(51))}),
    '{"user_id": 1, "candidates": [1010], "extra": 1}', '{"user_id": 1, "candidates": [1010], "context": {}}',
    '{"user_id": 1, "candidates": [1010, 1020], "context": {"candidate_categories": [501]}}',
    '{"user_id": 1, "candidates": [1010], "context": {"candidate_categories": [501]}}',  # valid: route
    '{"user_id": 1, "candidates": [1010], "recent_events": [{"timestamp": 1}]}',
    '{"user_id": 1, "candidates": [1010], "recent_events": [{"item_id": 1020}]}',  # valid: route
    '{"user_id": 1, "candidates": [1010], "recent_events": {}}', '{"user_id": 1, "candidates": [1010]} x',
    '{"user_id": NaN, "candidates": [1010]}',
]


@pytest.mark.parametrize("body", VALID)
def test_valid_bodies_take_the_fast_path_with_identical_bytes(pair: tuple[TestClient, TestClient], body: str) -> None:
    fast, slow = pair
    before = fast_path_counts(fast).get("served", 0.0)
    rf, rs = fast.post("/v1/score", content=body, headers=JSON), slow.post("/v1/score", content=body, headers=JSON)
    assert rf.status_code == rs.status_code == 200, rs.text
    assert rf.content == rs.content
    assert rf.headers["content-type"] == rs.headers["content-type"] == "application/json"
    assert rf.headers["content-length"] == rs.headers["content-length"]
    assert fast_path_counts(fast)["served"] == before + 1  # it really was the fast path
    assert fast_path_counts(slow) == {}
    assert plain_score_body(body.encode(), 50) is not None


@pytest.mark.parametrize("body", PASSED)
def test_other_bodies_reach_the_route_unchanged(pair: tuple[TestClient, TestClient], body: str) -> None:
    fast, slow = pair
    before = fast_path_counts(fast).get("fallthrough", 0.0)
    rf, rs = fast.post("/v1/score", content=body, headers=JSON), slow.post("/v1/score", content=body, headers=JSON)
    assert (rf.status_code, rf.content) == (rs.status_code, rs.content)
    assert rf.status_code < 500
    assert fast_path_counts(fast)["fallthrough"] == before + 1
    assert plain_score_body(body.encode(), 50) is None


@pytest.mark.parametrize("headers", [{}, {"Content-Type": "text/plain"}, {"Content-Type": "application/merge-patch+json"}])
def test_other_content_types_reach_the_route(pair: tuple[TestClient, TestClient], headers: dict[str, str]) -> None:
    fast, slow = pair
    body = json.dumps({"user_id": 7001, "candidates": ITEMS[:3]})
    rf, rs = fast.post("/v1/score", content=body, headers=headers), slow.post("/v1/score", content=body, headers=headers)
    assert (rf.status_code, rf.content) == (rs.status_code, rs.content)


def test_oversize_and_auth_still_apply(tmp_path: Path) -> None:
    settings = ServingSettings(store=f"sqlite:{tmp_path / 's.sqlite3'}", token="tok", max_body_bytes=1024, require_token_for_reads=True)
    with TestClient(create_app(settings, ctr=M.ctr_scorer())) as c:
        body = {"user_id": 1, "candidates": ITEMS[:3]}
        assert c.post("/v1/score", json=body).status_code == 401  # reads need the token: the route answers
        assert c.post("/v1/score", json=body, headers=AUTH).status_code == 200
        assert c.post("/v1/score", json={"user_id": 1, "candidates": [1010] * 300}, headers=AUTH).status_code == 413
        assert "/v1/score" in c.get("/openapi.json").json()["paths"]
