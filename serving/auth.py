"""Bearer-token check, and the route classes that run it before the request body is read.

FastAPI reads and parses a route's body before it resolves the route's dependencies, so a token
dependency would let an unauthenticated client make the server parse up to `max_body_bytes`. The
route classes here check the token first (write/admin routes always, read routes when
`require_token_for_reads`), then the Content-Type, and only then let FastAPI read the body. They
also turn FastAPI's unnamed `400 There was an error parsing the body` into the uniform error shape
naming what was wrong (invalid UTF-8, nesting too deep, an integer of more than 4,300 digits).
"""

from __future__ import annotations

import hmac
from email.message import Message
from typing import Any, Callable, Coroutine

from fastapi import Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException  # what FastAPI raises for an unreadable body

from serving.errors import FieldError
from serving.middleware import BodyReadError
from serving.service import Service, get_service

#: the OpenAPI security scheme of the protected routes (the check itself is `check_token`)
bearer = HTTPBearer(auto_error=False, description="Bearer token (write/admin; reads when configured)")

AUTH_LOC = ("header", "Authorization")


def check_token(svc: Service, authorization: str | None) -> None:
    """Raise 401 naming the Authorization header unless it carries the configured token."""
    if svc.token is None:
        raise FieldError(AUTH_LOC, f"no token configured on the server (set {svc.settings.token_env})", 401)
    scheme, _, credentials = (authorization or "").partition(" ")
    if not authorization or scheme.lower() != "bearer" or not credentials:
        raise FieldError(AUTH_LOC, "missing bearer token", 401)
    if not hmac.compare_digest(credentials.strip().encode(), svc.token.encode()):
        raise FieldError(AUTH_LOC, "invalid bearer token", 401)


def check_content_type(value: str | None) -> None:
    """415 naming Content-Type unless it is JSON (application/json or application/*+json)."""
    if not value:
        raise FieldError(("header", "Content-Type"), "missing; send Content-Type: application/json", 415)
    msg = Message()
    msg["content-type"] = value
    sub = msg.get_content_subtype()
    if msg.get_content_maintype() != "application" or not (sub == "json" or sub.endswith("+json")):
        raise FieldError(("header", "Content-Type"), f"{msg.get_content_type()!r} is not supported; send application/json", 415)


def body_error(cause: BaseException) -> BaseException:
    """The named error for what made FastAPI's JSON body parsing fail."""
    if isinstance(cause, BodyReadError):
        return cause  # answered by GuardMiddleware (413, 408, client gone)
    if isinstance(cause, UnicodeDecodeError):
        return FieldError(("body",), f"not valid UTF-8 (byte {cause.start}): {cause.reason}", 422, "body_encoding")
    if isinstance(cause, RecursionError):
        return FieldError(("body",), "JSON nested too deeply to parse", 422, "json_too_deep")
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return FieldError(("body",), f"JSON integer too long: {cause}", 422, "json_int_too_long")
    return FieldError(("body",), f"could not be read as JSON ({type(cause).__name__})", 422, "json_invalid")


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class CheckedRoute(APIRoute):
    """A route whose token (when `needs_token` says so) and Content-Type are checked before its
    body is read, with body-parsing failures named (see the module docstring)."""

    def needs_token(self, svc: Service) -> bool:
        return True

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        has_body = self.body_field is not None

        async def checked(request: Request) -> Response:
            svc = get_service(request)
            if self.needs_token(svc):
                check_token(svc, request.headers.get("authorization"))
            if has_body:
                check_content_type(request.headers.get("content-type"))
            try:
                return await handler(request)
            except HTTPException as exc:
                if exc.status_code == 400 and exc.__cause__ is not None:
                    raise body_error(exc.__cause__) from None
                raise

        return checked


class WriteRoute(CheckedRoute):
    """Write and admin routes: the token is always required."""


class ReadRoute(CheckedRoute):
    """Read routes: the token is required when `require_token_for_reads` is set."""

    def needs_token(self, svc: Service) -> bool:
        return svc.settings.require_token_for_reads
