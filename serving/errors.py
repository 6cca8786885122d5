"""One error shape for every client error: `{"detail": [{"loc", "msg", "type"}], "message"}`, the
shape of FastAPI's 422s, with `message` naming each field (`body.candidates: ...`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from serving.grouper import Overloaded


class FieldError(Exception):
    """A request that passed the schema but breaks a rule or limit: `status` (422 unless told)
    naming the field at `loc`."""

    def __init__(self, loc: tuple[str | int, ...], msg: str, status: int = 422, kind: str = "value_error") -> None:
        super().__init__(msg)
        self.loc, self.msg, self.status, self.kind = loc, msg, status, kind


class Unavailable(Exception):
    """503: a model the endpoint needs is not loaded."""


def error_response(status: int, errors: list[dict[str, Any]], headers: dict[str, str] | None = None) -> JSONResponse:
    """The uniform error body."""
    message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
    return JSONResponse({"detail": errors, "message": message}, status_code=status, headers=headers)


def field_error_response(exc: FieldError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return error_response(exc.status, [{"loc": list(exc.loc), "msg": exc.msg, "type": exc.kind}], headers)


def overloaded_response(exc: Overloaded) -> JSONResponse:
    return error_response(503, [{"loc": [], "msg": str(exc), "type": "overloaded"}], {"Retry-After": "1"})


async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in exc.errors()]
    for e, raw in zip(errors, exc.errors()):  # name what was wrong with unparsable JSON
        ctx = raw.get("ctx") or {}
        if e["type"] == "json_invalid" and ctx.get("error"):
            e["msg"] = f"{e['msg']}: {ctx['error']}"
    return error_response(422, errors)


async def _field(_: Request, exc: FieldError) -> JSONResponse:
    return field_error_response(exc)


async def _overloaded(_: Request, exc: Overloaded) -> JSONResponse:
    return overloaded_response(exc)


async def _unavailable(_: Request, exc: Unavailable) -> JSONResponse:
    return error_response(503, [{"loc": [], "msg": str(exc), "type": "unavailable"}])


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the uniform shape."""
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(FieldError, _field)  # type: ignore[arg-type]
    app.add_exception_handler(Overloaded, _overloaded)  # type: ignore[arg-type]
    app.add_exception_handler(Unavailable, _unavailable)  # type: ignore[arg-type]
