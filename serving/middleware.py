"""GuardMiddleware: the outermost layer of the app (pure ASGI).

- A body over `max_body_bytes` is refused with 413: by Content-Length before anything is read,
  and while streaming for bodies without one (nothing is buffered ahead of the route).
- A body that is not complete `body_read_timeout_s` after the request started is answered 408
  and the connection closed, so a client that half-sends a body cannot hold a slot forever.
- A client that disconnects before its body is complete is counted as status "499" (the
  client-closed-request code), not as a 400 of ours.
- Request counts and latency are recorded per endpoint (`recsys_requests_total`, ...).
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from serving.errors import error_response
from serving.metrics import Metrics

ENDPOINTS = ("/v1/score", "/v1/recommend", "/v1/events", "/admin/reload", "/healthz", "/readyz", "/metrics", "/docs",
             "/openapi.json")
CLIENT_GONE = 499  # status label of requests whose client disconnected before the body was complete


class BodyReadError(Exception):
    """The request body could not be read to its end; GuardMiddleware answers it."""

    status = 400
    loc = ("body",)


class BodyTooLarge(BodyReadError):
    status = 413


class BodyTimeout(BodyReadError):
    status = 408


class ClientGone(BodyReadError):
    status = CLIENT_GONE


class GuardMiddleware:
    """See the module docstring."""

    def __init__(self, app: Any, max_body_bytes: int, body_read_timeout_s: float, metrics: Metrics) -> None:
        self.app, self.max_body, self.timeout, self.metrics = app, max_body_bytes, body_read_timeout_s, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        t0 = time.perf_counter()
        status = {"code": 500, "started": False}

        async def send_wrapped(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                status["code"], status["started"] = msg["status"], True
            await send(msg)

        length = dict(scope.get("headers") or []).get(b"content-length")
        try:
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                raise BodyTooLarge(f"request body exceeds max_body_bytes={self.max_body}")
            await self.app(scope, self._guarded_receive(receive, time.monotonic() + self.timeout), send_wrapped)
        except BodyReadError as exc:
            await self._answer(exc, status, scope, receive, send_wrapped)
        finally:
            self.metrics.requests.labels(endpoint, scope.get("method", ""), str(status["code"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)

    def _guarded_receive(self, receive: Any, deadline: float) -> Any:
        """`receive` that enforces the size limit and the read deadline while the body is incomplete."""
        state = {"size": 0, "done": False}

        async def guarded() -> dict:
            if state["done"]:
                return await receive()
            try:
                with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                    msg = await receive()
            except TimeoutError:
                raise BodyTimeout(f"request body not received within body_read_timeout_s={self.timeout:g}") from None
            if msg["type"] == "http.disconnect":
                raise ClientGone("client disconnected before the request body was complete")
            if msg["type"] == "http.request":
                state["size"] += len(msg.get("body", b""))
                if state["size"] > self.max_body:
                    raise BodyTooLarge(f"request body exceeds max_body_bytes={self.max_body}")
                state["done"] = not msg.get("more_body", False)
            return msg

        return guarded

    async def _answer(self, exc: BodyReadError, status: dict, scope: dict, receive: Any, send: Any) -> None:
        if isinstance(exc, ClientGone):
            status["code"] = CLIENT_GONE  # nobody to answer
            return
        if status["started"]:
            raise exc
        kind = "too_large" if isinstance(exc, BodyTooLarge) else "timeout"
        response = error_response(exc.status, [{"loc": list(exc.loc), "msg": str(exc), "type": kind}],
                                  {"Connection": "close"})
        await response(scope, receive, send)
