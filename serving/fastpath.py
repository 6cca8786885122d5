"""A fast path for plain, valid `POST /v1/score` bodies: pure ASGI, in front of the FastAPI route.

Why: at C=512 FastAPI's request handling (pydantic validation of 512 ids, dependency and body
resolution, Request objects) cost about as much as the model's scoring. This middleware reads
the body, parses it with orjson and accepts only bodies that a cheap check proves valid under the
`ScoreRequest` schema and the configured limits:
    keys `user_id` and `candidates` (plus `context` / `recent_events` only when null, or `[]` for
    `recent_events`), `user_id` a JSON integer in [0, 2^63), `candidates` a list of 1..min(
    max_candidates, HARD_MAX_CANDIDATES) JSON integers in [0, 2^63);
    `Content-Type: application/json`; reads not configured to need a token; service started with a
    CTR model.
It then scores exactly as the route does (the same `Scoring` class, the same orjson body and
headers). Everything else - other paths and methods, other content types, any body it does not
accept - goes to FastAPI unchanged (the body is replayed), so error responses are the route's,
byte for byte, and the OpenAPI schema still documents the (still registered) route.
`recsys_fast_path_total{outcome}` counts served vs passed-through score requests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from serving.errors import overloaded_response
from serving.grouper import Overloaded
from serving.metrics import Metrics
from serving.schemas import HARD_MAX_CANDIDATES, INT64_MAX
from serving.scoring import Scoring

PLAIN_KEYS = frozenset({"user_id", "candidates", "context", "recent_events"})


def plain_score_body(body: bytes, max_candidates: int) -> tuple[int, np.ndarray] | None:
    """(user_id, raw candidate ids [C] int64) when `body` is a valid plain score request, else None
    (the FastAPI route then answers it: valid-but-unusual bodies and every error)."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(req) is not dict or not req.keys() <= PLAIN_KEYS or "user_id" not in req or "candidates" not in req:
        return None
    if req.get("context") is not None or req.get("recent_events") not in (None, []):
        return None
    user, cands = req["user_id"], req["candidates"]
    # strict pydantic ints: exactly int (bool and float are refused); orjson gives float above 2^64
    if type(user) is not int or not 0 <= user <= INT64_MAX:
        return None
    if type(cands) is not list or not 1 <= len(cands) <= min(max_candidates, HARD_MAX_CANDIDATES):
        return None
    if set(map(type, cands)) != {int}:
        return None
    try:
        raw = np.array(cands, dtype=np.int64)  # OverflowError above int64
    except OverflowError:
        return None
    if raw.min() < 0:
        return None
    return user, raw


class FastScoreMiddleware:
    """Pure ASGI middleware serving plain valid `POST /v1/score` bodies (see the module docstring)
    with the route's own `Scoring`; `Overloaded` gets the route's 503 response."""

    def __init__(self, app: Any, *, enabled: bool, max_candidates: int, scoring: Scoring, metrics: Metrics) -> None:
        self.app, self.enabled, self.max_candidates = app, enabled, max_candidates
        self.scoring, self.metrics = scoring, metrics

    def count(self, outcome: str) -> None:
        self.metrics.fast_path.labels(outcome).inc()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (not self.enabled or scope["type"] != "http" or scope["path"] != "/v1/score" or scope["method"] != "POST"
                or not self.scoring.ready()):
            await self.app(scope, receive, send)
            return
        ctype = next((v for k, v in scope["headers"] if k == b"content-type"), None)
        if ctype is None or ctype.lower() != b"application/json":
            self.count("fallthrough")
            await self.app(scope, receive, send)
            return
        # read the body; keep every message to replay it unchanged if the route must answer
        messages: list[dict] = []
        while True:
            msg = await receive()
            messages.append(msg)
            if msg["type"] != "http.request" or not msg.get("more_body", False):
                break
        parsed = None
        if messages[-1]["type"] == "http.request":
            body = b"".join(m.get("body", b"") for m in messages)
            parsed = plain_score_body(body, self.max_candidates)
        if parsed is None:
            self.count("fallthrough")
            pending = iter(messages)

            async def replay() -> dict:
                for m in pending:
                    return m
                return await receive()

            await self.app(scope, replay, send)
            return
        self.count("served")
        try:
            out = await self.scoring.raw(*parsed)
        except Overloaded as exc:
            await overloaded_response(exc)(scope, receive, send)
            return
        # the same bytes and headers as the route's `Response(out, media_type="application/json")`
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(out)).encode()), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": out})
