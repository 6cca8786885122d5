"""The FastAPI scoring service: `create_app(settings)`.

Endpoints (see serving/README.md for curl examples):
    POST /v1/score       score raw candidate item ids for a user (read)
    POST /v1/recommend   faiss retrieval from the next-item model, CTR re-rank, top-k (read)
    POST /v1/events      append behaviours; answered only once durable; idempotent on event_id (write)
    POST /admin/reload   load a model directory and swap it in atomically; old model kept on failure (admin)
    GET  /healthz /readyz /metrics, OpenAPI docs at /docs

Cold start: a user with no stored events is scored with an empty history (`cold_start: true`
in the response); /v1/recommend needs a history and answers 404 naming `user_id`.
Write and admin endpoints need `Authorization: Bearer <token>` (token from settings or the
environment, compared with hmac.compare_digest); with no token configured they answer 401.
"""

from __future__ import annotations

import gc
import hmac
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import anyio
import numpy as np
import orjson
from fastapi import BackgroundTasks, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.middleware import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.batcher import MicroBatcher, Overloaded
from serving.fastpath import FastScoreMiddleware
from serving.metrics import Metrics
from serving.models import CTRScorer, Retriever, State, clone_state
from serving.schemas import (
    EventsRequest,
    EventsResponse,
    Health,
    ModelRef,
    Recommendation,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
    ScoreRequest,
    ScoreResponse,
)
from serving.settings import ServingSettings, inline_scoring
from serving.state import StateCache, UserState
from serving.store.base import NO_CATEGORY, Event, History, UserStore, open_store

log = logging.getLogger(__name__)

ENDPOINTS = ("/v1/score", "/v1/recommend", "/v1/events", "/admin/reload", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")


class FieldError(Exception):
    """A request that passed the schema but breaks a configured limit: 422 naming the field."""

    def __init__(self, loc: tuple[str | int, ...], msg: str, status: int = 422) -> None:
        super().__init__(msg)
        self.loc, self.msg, self.status = loc, msg, status


class Unavailable(Exception):
    """503: a model the endpoint needs is not loaded."""


@dataclass
class ScoreJob:
    scorer: CTRScorer
    cache: StateCache
    user_id: int
    user: UserState | None  # resolved before queueing (cold cache); None: look it up in the batch thread
    dense: np.ndarray  # [C] dense candidate ids (0 = unknown)
    cats: np.ndarray | None  # [C] raw candidate categories (-1 = use the item's)
    recent: History | None  # request-only events applied on a copy of the state


def run_score_jobs(jobs: list[ScoreJob]) -> list[tuple[UserState, np.ndarray] | BaseException]:
    """The micro-batch function: one worker-thread call resolves each request's cached user state
    (one O(1) store read of the user's event count when the state is in the in-process cache: no
    extra thread hop) and scores every queued request."""
    out: list[tuple[UserState, np.ndarray] | BaseException] = []
    for job in jobs:
        try:
            us = job.user if job.user is not None else job.cache.get(job.scorer, job.user_id)
            state = us.state
            if job.recent is not None and len(job.recent):
                r = job.recent  # request-only events right after the stored ones (seq us.seq+1..)
                state = job.scorer.append(clone_state(state), History(r.items, r.categories, r.timestamps, us.seq + len(r)))
            probs = np.full(job.dense.shape, np.nan)
            known = job.dense > 0
            if known.all():
                probs = job.scorer.score(state, job.dense, job.cats)
            elif known.any():
                cats = None if job.cats is None else job.cats[known]
                probs[known] = job.scorer.score(state, job.dense[known], cats)
            out.append((us, probs))
        except Exception as exc:  # noqa: BLE001 - reported to that request only
            out.append(exc)
    return out


@dataclass
class Service:
    """Everything one app instance owns (kept on app.state.svc; no module-level state)."""

    settings: ServingSettings
    metrics: Metrics
    store: UserStore | None = None
    ctr: CTRScorer | None = None
    retriever: Retriever | None = None
    cache: StateCache | None = None
    batcher: MicroBatcher[ScoreJob, tuple[UserState, np.ndarray]] | None = None
    token: str | None = None
    ready: bool = False
    owns_store: bool = False
    reload_lock: anyio.Lock = field(default_factory=anyio.Lock)

    def need_ctr(self) -> CTRScorer:
        if self.ctr is None:
            raise Unavailable("no CTR model loaded (POST /admin/reload with kind=ctr)")
        return self.ctr

    def need_retriever(self) -> Retriever:
        if self.retriever is None:
            raise Unavailable("no retrieval model loaded (start with --retrieval-model or POST /admin/reload kind=retrieval)")
        return self.retriever


def _error(status: int, errors: list[dict[str, Any]], headers: dict[str, str] | None = None) -> JSONResponse:
    message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
    return JSONResponse({"detail": errors, "message": message}, status_code=status, headers=headers)


def overloaded_response(exc: Overloaded) -> JSONResponse:
    return _error(503, [{"loc": [], "msg": str(exc), "type": "overloaded"}], {"Retry-After": "1"})


class GuardMiddleware:
    """Pure ASGI: rejects bodies over `max_body_bytes` with 413 (by Content-Length, and while
    streaming for chunked bodies) and records request counts and latency per endpoint."""

    def __init__(self, app: Any, max_body_bytes: int, metrics: Metrics) -> None:
        self.app, self.max_body, self.metrics = app, max_body_bytes, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_wrapped(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)

        def too_big() -> JSONResponse:  # built only when needed (not on every request)
            return _error(413, [{"loc": ["body"], "msg": f"request body exceeds max_body_bytes={self.max_body}", "type": "too_large"}])

        length = dict(scope.get("headers") or []).get(b"content-length")
        try:
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await too_big()(scope, receive, send_wrapped)
                return
            if length is None and scope.get("method") in ("POST", "PUT", "PATCH"):
                # no Content-Length (chunked): read the body up to the limit first, then replay it
                chunks, size, more = [], 0, True
                while more:
                    msg = await receive()
                    if msg["type"] != "http.request":
                        return
                    chunks.append(msg.get("body", b""))
                    size += len(chunks[-1])
                    more = msg.get("more_body", False)
                    if size > self.max_body:
                        await too_big()(scope, receive, send_wrapped)
                        return
                body = b"".join(chunks)
                sent = False

                async def replay() -> dict:
                    nonlocal sent
                    if not sent:
                        sent = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                await self.app(scope, replay, send_wrapped)
            else:
                await self.app(scope, receive, send_wrapped)
        finally:
            self.metrics.requests.labels(endpoint, scope.get("method", ""), str(status["code"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)


def freeze_long_lived() -> None:
    """Collect garbage (also what earlier freezes kept, e.g. a model replaced by /admin/reload),
    then move every surviving object to the GC's permanent generation: later collections only
    traverse objects created after this (request garbage), not the model/framework heap."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def create_app(
    settings: ServingSettings,
    *,
    ctr: CTRScorer | None = None,
    retriever: Retriever | None = None,
    store: UserStore | None = None,
) -> FastAPI:
    """Build the app. Models and store are loaded at start-up from `settings` unless given
    (tests and Ray replicas pass them in)."""
    svc = Service(settings=settings, metrics=Metrics(), store=store, ctr=ctr, retriever=retriever, token=settings.resolved_token())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if svc.ready:  # the batcher belongs to one event loop: one running instance per app
            raise RuntimeError("this app is already running (create_app once per server)")
        if svc.store is None:
            svc.store = open_store(settings.store, settings.max_history, settings.event_id_ttl_s)
            svc.owns_store = True
        if svc.ctr is None and settings.ctr_model_dir is not None:
            svc.ctr = await run_in_threadpool(CTRScorer.load, settings.ctr_model_dir, settings.max_history, settings.device)
        if svc.retriever is None and settings.retrieval_model_dir is not None:
            svc.retriever = await run_in_threadpool(Retriever.load, settings.retrieval_model_dir)
        if settings.bootstrap_build_dir is not None:
            from serving.bootstrap import bootstrap_store

            n = await run_in_threadpool(bootstrap_store, svc.store, settings.bootstrap_build_dir)
            log.info("bootstrap: loaded %d users from %s", n, settings.bootstrap_build_dir)
        svc.cache = StateCache(svc.store, svc.metrics, settings.state_cache_users)

        def on_batch(n: int, seconds: float) -> None:
            svc.metrics.batch_size.observe(n)
            svc.metrics.batch_latency.observe(seconds)

        b = settings.batch
        inline = inline_scoring(settings, svc.store)
        svc.batcher = MicroBatcher(run_score_jobs, b.max_batch, b.max_wait_ms, b.max_queue, on_batch=on_batch,
                                   flush_when_idle=b.flush_when_idle, inline_when_alone=inline)
        await svc.batcher.start()
        if svc.ctr is not None:
            await run_in_threadpool(svc.ctr.warm_up)
        if settings.gc_freeze:
            gc.freeze()  # no collection first: start-up garbage is small and a collection would stall start-up
        svc.ready = True
        try:
            yield
        finally:
            svc.ready = False
            if settings.gc_freeze:
                gc.unfreeze()
            await svc.batcher.stop()
            if svc.owns_store:
                svc.store.close()
            log.info("serving: shutdown complete (batcher drained, store closed)")

    app = FastAPI(
        title="recsys scoring service",
        version="1",
        description=__doc__,
        lifespan=lifespan,
    )
    app.state.svc = svc
    app.add_middleware(GuardMiddleware, max_body_bytes=settings.max_body_bytes, metrics=svc.metrics)
    bearer = HTTPBearer(auto_error=False, description="Bearer token (write/admin; reads when configured)")

    def check_token(creds: HTTPAuthorizationCredentials | None) -> None:
        if svc.token is None:
            raise FieldError(("header", "Authorization"), f"no token configured on the server (set {settings.token_env})", 401)
        if creds is None or creds.scheme.lower() != "bearer":
            raise FieldError(("header", "Authorization"), "missing bearer token", 401)
        if not hmac.compare_digest(creds.credentials.encode(), svc.token.encode()):
            raise FieldError(("header", "Authorization"), "invalid bearer token", 401)

    def write_auth(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        check_token(creds)

    def read_auth(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if settings.require_token_for_reads:
            check_token(creds)

    # -- errors -------------------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in exc.errors()]
        return _error(422, errors)

    @app.exception_handler(FieldError)
    async def _field(_: Request, exc: FieldError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, [{"loc": list(exc.loc), "msg": exc.msg, "type": "value_error"}], headers)

    @app.exception_handler(Overloaded)
    async def _overloaded(_: Request, exc: Overloaded) -> JSONResponse:
        return overloaded_response(exc)

    @app.exception_handler(Unavailable)
    async def _unavailable(_: Request, exc: Unavailable) -> JSONResponse:
        return _error(503, [{"loc": [], "msg": str(exc), "type": "unavailable"}])

    # -- endpoints ------------------------------------------------------------------------------
    async def score_dense(scorer: CTRScorer, user_id: int, dense: np.ndarray, cats: np.ndarray | None, recent: History | None):
        cache, batcher = svc.cache, svc.batcher
        assert cache is not None and batcher is not None
        if batcher.inline_when_alone:
            # a lone request may be scored on the event loop: it must carry a state that needs no
            # store I/O beyond the O(1) seq read; a cold or behind-the-store state (catch-up reads
            # history and may wait for a writer's fsync) is resolved in a worker thread first
            us = cache.current(scorer, user_id)
            if us is None:
                us = await run_in_threadpool(cache.get, scorer, user_id)
        else:
            # warm: the batch thread checks the cached state against the store's event count (O(1));
            # cold: load/encode it here first so a long history does not stall other users' batch
            us = None if cache.contains(scorer, user_id) else await run_in_threadpool(cache.get, scorer, user_id)
        return await batcher.submit(ScoreJob(scorer, cache, user_id, us, dense, cats, recent))

    async def score_raw(scorer: CTRScorer, user_id: int, raw: np.ndarray, cats: np.ndarray | None = None,
                        recent: History | None = None) -> bytes:
        """Score raw candidate ids; the JSON response body (shared by the route and the fast path)."""
        dense = scorer.encode_items(raw)
        us, probs = await score_dense(scorer, user_id, dense, cats, recent)
        # the ScoreResponse schema (documented on the route), serialised directly: the values are
        # built here with the right types, so FastAPI's re-validation of 512 floats is skipped;
        # NaN (unknown candidate) -> null
        body = {
            "user_id": user_id,
            "scores": probs,
            "model": {"name": scorer.info.name, "version": scorer.info.version},
            "unknown_items": raw[dense == 0],
            "cold_start": us.seq == 0,
            "history_length": us.history_length,
        }
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

    def fast_accept() -> bool:
        return svc.ready and svc.ctr is not None

    async def fast_score(user_id: int, raw: np.ndarray) -> bytes:
        return await score_raw(svc.need_ctr(), user_id, raw)

    def fast_error(exc: Exception) -> Any | None:
        return overloaded_response(exc) if isinstance(exc, Overloaded) else None

    # inside GuardMiddleware (user_middleware[0] is outermost): size limits and metrics apply to it too
    app.user_middleware.append(Middleware(
        FastScoreMiddleware, enabled=settings.fast_score_path and not settings.require_token_for_reads,
        max_candidates=settings.max_candidates, accept=fast_accept, score_raw=fast_score, on_error=fast_error,
        count=lambda outcome: svc.metrics.fast_path.labels(outcome).inc()))

    # open reads skip the auth dependency altogether (FastAPI resolves every declared dependency
    # on each request; the OpenAPI docs then show no security on the read endpoints, as served)
    read_deps = [Depends(read_auth)] if settings.require_token_for_reads else []

    @app.post("/v1/score", response_model=ScoreResponse, dependencies=read_deps)
    async def score(req: ScoreRequest) -> Response:
        scorer = svc.need_ctr()
        if len(req.candidates) > settings.max_candidates:
            raise FieldError(("body", "candidates"), f"at most {settings.max_candidates} candidates per request, got {len(req.candidates)}")
        cats = None
        if req.context is not None and req.context.candidate_categories is not None:
            if len(req.context.candidate_categories) != len(req.candidates):
                raise FieldError(("body", "context", "candidate_categories"),
                                 f"must have one entry per candidate ({len(req.candidates)}), got {len(req.context.candidate_categories)}")
            cats = np.asarray(req.context.candidate_categories, dtype=np.int64)
        recent = None
        if req.recent_events:
            recent = History(
                np.asarray([e.item_id for e in req.recent_events], dtype=np.int64),
                np.asarray([NO_CATEGORY if e.category_id is None else e.category_id for e in req.recent_events], dtype=np.int64),
                np.asarray([e.timestamp or 0 for e in req.recent_events], dtype=np.int64),
            )
        raw = np.asarray(req.candidates, dtype=np.int64)
        return Response(await score_raw(scorer, req.user_id, raw, cats, recent), media_type="application/json")

    @app.post("/v1/recommend", response_model=RecommendResponse, dependencies=read_deps)
    async def recommend(req: RecommendRequest) -> RecommendResponse:
        scorer, retr = svc.need_ctr(), svc.need_retriever()
        assert svc.store is not None
        if req.k > settings.max_k:
            raise FieldError(("body", "k"), f"k must be <= {settings.max_k}, got {req.k}")
        with svc.metrics.store_op("history"):
            h = await run_in_threadpool(svc.store.history, req.user_id)
        if len(h) == 0:
            raise FieldError(("body", "user_id"), f"user {req.user_id} has no stored history (cold start): send /v1/events first", 404)
        exclude = set(h.items.tolist()) if req.exclude_seen else set()
        try:
            raw, rscores = await run_in_threadpool(retr.candidates, h, max(settings.retrieval_pool, req.k), exclude)
        except LookupError as exc:
            raise FieldError(("body", "user_id"), str(exc), 404) from None
        dense = scorer.encode_items(raw)
        _, probs = await score_dense(scorer, req.user_id, dense, None, None)
        probs = np.where(np.isnan(probs), -1.0, probs)  # items the CTR model does not know rank last
        order = np.argsort(-probs, kind="stable")[: req.k]
        return RecommendResponse(
            user_id=req.user_id,
            items=[Recommendation(item_id=int(raw[i]), retrieval_score=float(rscores[i]), ctr_score=float(max(probs[i], 0.0))) for i in order],
            retrieval_model=ModelRef(name=retr.info.name, version=retr.info.version),
            ctr_model=ModelRef(name=scorer.info.name, version=scorer.info.version),
        )

    @app.post("/v1/events", response_model=EventsResponse, dependencies=[Depends(write_auth)])
    async def events(req: EventsRequest, background: BackgroundTasks) -> EventsResponse:
        assert svc.store is not None
        if len(req.events) > settings.max_events_per_request:
            raise FieldError(("body", "events"), f"at most {settings.max_events_per_request} events per request, got {len(req.events)}")
        evs = [
            Event(e.event_id, e.user_id, e.item_id, e.timestamp, NO_CATEGORY if e.category_id is None else e.category_id, e.event_type)
            for e in req.events
        ]
        with svc.metrics.store_op("append"):
            res = await run_in_threadpool(svc.store.append, evs)  # returns once durable
        svc.metrics.events.labels("stored").inc(len(res.stored))
        svc.metrics.events.labels("duplicate").inc(len(res.duplicates))
        unknown: list[int] = []
        if svc.ctr is not None:
            scorer, cache = svc.ctr, svc.cache
            items = np.asarray([e.item_id for e in evs], dtype=np.int64)
            unknown = sorted(set(items[scorer.encode_items(items) == 0].tolist()))
            if res.stored and cache is not None:  # after the response: advance cached states incrementally
                stored = set(res.stored)
                for user in sorted({e.user_id for e in evs if e.event_id in stored}):
                    background.add_task(run_in_threadpool, cache.get, scorer, user, True)
        return EventsResponse(stored=res.stored, duplicates=res.duplicates, unknown_items=unknown)

    @app.post("/admin/reload", response_model=ReloadResponse, dependencies=[Depends(write_auth)])
    async def reload(req: ReloadRequest) -> ReloadResponse:
        async with svc.reload_lock:
            try:
                new: CTRScorer | Retriever
                if req.kind == "ctr":
                    scorer = await run_in_threadpool(CTRScorer.load, req.model_dir, settings.max_history, settings.device)
                    await run_in_threadpool(scorer.warm_up)  # a model that cannot score is refused here
                    new = scorer
                else:
                    new = await run_in_threadpool(Retriever.load, req.model_dir)
            except Exception as exc:  # noqa: BLE001 - any load failure keeps the old model
                log.warning("reload of %s failed: %s", req.model_dir, exc)
                raise FieldError(("body", "model_dir"), f"load failed, still serving the previous model: {exc}") from None
            old = svc.ctr if req.kind == "ctr" else svc.retriever
            if req.kind == "ctr":
                svc.ctr = new  # type: ignore[assignment]  # one reference assignment: atomic for readers
                if svc.cache is not None:
                    svc.cache.clear()
            else:
                svc.retriever = new  # type: ignore[assignment]
            out = ReloadResponse(
                kind=req.kind,
                model=ModelRef(name=new.info.name, version=new.info.version),
                previous=None if old is None else ModelRef(name=old.info.name, version=old.info.version),
            )
            del old  # not referenced from here on: the collection below frees it (or it would be frozen)
            if settings.gc_freeze:  # one full collection (frees the old model), then freeze the new heap
                freeze_long_lived()
        return out

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}})
    async def readyz() -> Any:
        store_ok = False
        if svc.store is not None:
            try:
                store_ok = await run_in_threadpool(svc.store.ping)
            except Exception:  # noqa: BLE001 - reported as not ready
                store_ok = False
        detail = {
            "started": svc.ready,
            "store": store_ok,
            "ctr_model": None if svc.ctr is None else svc.ctr.key,
            "retrieval_model": None if svc.retriever is None else f"{svc.retriever.info.name}-{svc.retriever.info.version}",
        }
        ok = svc.ready and store_ok and svc.ctr is not None and (settings.retrieval_model_dir is None or svc.retriever is not None)
        body = Health(status="ready" if ok else "not ready", detail=detail)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
