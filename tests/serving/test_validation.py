"""Bad input -> 4xx whose message names the field, never a 5xx; schemathesis fuzz of the OpenAPI schema."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import ServingSettings
from tests.serving import models as M

AUTH = {"Authorization": "Bearer tok"}
BIG = 2**63


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    path = tmp_path_factory.mktemp("v") / "s.sqlite3"
    settings = ServingSettings(store=f"sqlite:{path}", token="tok", max_candidates=50, max_events_per_request=5,
                               max_body_bytes=4096, max_k=20)
    with TestClient(create_app(settings, ctr=M.ctr_scorer(), retriever=M.retriever())) as c:
        yield c


EV = {"event_id": "e1", "user_id": 1, "item_id": 1010, "timestamp": 5}

CASES = [
    ("/v1/score", {"candidates": [1]}, 422, "body.user_id"),
    ("/v1/score", {"user_id": "7", "candidates": [1]}, 422, "body.user_id"),
    ("/v1/score", {"user_id": 1.5, "candidates": [1]}, 422, "body.user_id"),
    ("/v1/score", {"user_id": -1, "candidates": [1]}, 422, "body.user_id"),
    ("/v1/score", {"user_id": BIG, "candidates": [1]}, 422, "body.user_id"),
    ("/v1/score", {"user_id": 1}, 422, "body.candidates"),
    ("/v1/score", {"user_id": 1, "candidates": []}, 422, "body.candidates"),
    ("/v1/score", {"user_id": 1, "candidates": "1010"}, 422, "body.candidates"),
    ("/v1/score", {"user_id": 1, "candidates": [1, "x"]}, 422, "body.candidates.1"),
    ("/v1/score", {"user_id": 1, "candidates": [1, BIG]}, 422, "body.candidates.1"),
    ("/v1/score", {"user_id": 1, "candidates": list(range(51))}, 422, "body.candidates"),
    ("/v1/score", {"user_id": 1, "candidates": [1], "extra": 1}, 422, "body.extra"),
    ("/v1/score", {"user_id": 1, "candidates": [1, 2], "context": {"candidate_categories": [1]}}, 422, "body.context.candidate_categories"),
    ("/v1/score", {"user_id": 1, "candidates": [1], "recent_events": [{"timestamp": 1}]}, 422, "body.recent_events.0.item_id"),
    ("/v1/score", [1, 2], 422, "body"),
    ("/v1/recommend", {"user_id": 1, "k": 0}, 422, "body.k"),
    ("/v1/recommend", {"user_id": 1, "k": 21}, 422, "body.k"),
    ("/v1/recommend", {"user_id": 1, "exclude_seen": "yes"}, 422, "body.exclude_seen"),
    ("/v1/events", {"events": []}, 422, "body.events"),
    ("/v1/events", {"events": [EV] * 6}, 422, "body.events"),
    ("/v1/events", {"events": [{**EV, "event_id": ""}]}, 422, "body.events.0.event_id"),
    ("/v1/events", {"events": [{**EV, "event_id": "a b"}]}, 422, "body.events.0.event_id"),
    ("/v1/events", {"events": [{k: v for k, v in EV.items() if k != "timestamp"}]}, 422, "body.events.0.timestamp"),
    ("/v1/events", {"events": [{**EV, "item_id": None}]}, 422, "body.events.0.item_id"),
    ("/admin/reload", {"model_dir": ""}, 422, "body.model_dir"),
    ("/admin/reload", {"model_dir": "/x", "kind": "other"}, 422, "body.kind"),
]


@pytest.mark.parametrize(("path", "body", "status", "field"), CASES)
def test_bad_bodies_name_the_field(client: TestClient, path: str, body: object, status: int, field: str) -> None:
    r = client.post(path, json=body, headers=AUTH)
    assert r.status_code == status, r.text
    assert field in r.json()["message"], r.json()["message"]


def test_malformed_json_and_oversize_bodies(client: TestClient) -> None:
    r = client.post("/v1/score", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "body" in r.json()["message"]
    big = {"user_id": 1, "candidates": [1] * 3000}
    r = client.post("/v1/score", json=big)
    assert r.status_code == 413 and "max_body_bytes=4096" in r.json()["message"]

    def chunks():  # no Content-Length: the limit still holds while streaming
        for _ in range(100):
            yield b" " * 100

    r = client.post("/v1/score", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_schemathesis_fuzz_no_server_errors(client: TestClient) -> None:
    """Property-based requests generated from the OpenAPI schema, with and without the token
    (bounded: 30 examples per operation, a few seconds): no response may be a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())  # requests go through `client`
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/score", "/v1/recommend", "/v1/events", "/admin/reload"}
    calls = []
    for op in operations:

        @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(case=op.as_strategy())
        def run(case) -> None:
            for headers in ({}, AUTH):
                kwargs = case.as_transport_kwargs(headers=headers)
                kwargs.pop("base_url", None)
                response = client.request(**{k: v for k, v in kwargs.items() if k in
                                             ("method", "url", "headers", "params", "json", "content", "data")})
                calls.append(response.status_code)
                case.validate_response(response, checks=[not_a_server_error])

        run()
    assert len(calls) >= 2 * len(operations) and all(code < 500 for code in calls)
