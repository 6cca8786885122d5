"""The FastAPI scoring service: `create_app(settings)`.

Endpoints (see the README's "Scoring API" for curl examples):
    POST /v1/score       score raw candidate item ids for a user (read)
    POST /v1/recommend   faiss retrieval from the next-item model, CTR re-rank, top-k (read)
    POST /v1/events      append behaviours; answered only once durable; idempotent on event_id (write)
    POST /admin/reload   load a model directory and swap it in atomically; old model kept on failure (admin)
    GET  /healthz /readyz /metrics, OpenAPI docs at /docs (served from the fastapi-offline package: no CDN)

Cold start: a user with no stored events is scored with an empty history (`cold_start: true`
in the response); /v1/recommend needs a history and answers 404 naming `user_id`.
Write and admin endpoints need `Authorization: Bearer <token>` (token from settings or the
environment, compared with hmac.compare_digest), checked before the body is read; with no token
configured they answer 401.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline

from serving.auth import bearer
from serving.errors import install_error_handlers
from serving.fastpath import FastScoreMiddleware
from serving.lifespan import lifespan
from serving.metrics import Metrics
from serving.middleware import GuardMiddleware
from serving.models import CTRScorer, Retriever
from serving.routes import admin, events, health, recommend, score
from serving.scoring import Scoring
from serving.service import Service
from serving.settings import ServingSettings
from serving.store.base import UserStore


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
    app = FastAPIOffline(title="recsys scoring service", version="1", description=__doc__, lifespan=lifespan, redoc_url=None)
    app.state.svc = svc
    install_error_handlers(app)
    # the OpenAPI docs show the bearer scheme where it is required (the check itself runs in the routes' class)
    secured = [Depends(bearer)]
    read_deps = secured if settings.require_token_for_reads else []
    app.include_router(score.router, dependencies=read_deps)
    app.include_router(recommend.router, dependencies=read_deps)
    app.include_router(events.router, dependencies=secured)
    app.include_router(admin.router, dependencies=secured)
    app.include_router(health.router)
    # add_middleware puts each new one outside the previous: the fast path runs inside GuardMiddleware,
    # so size limits, the body read deadline and metrics apply to it too
    app.add_middleware(FastScoreMiddleware, enabled=settings.fast_score_path and not settings.require_token_for_reads,
                       max_candidates=settings.max_candidates, scoring=Scoring(svc), metrics=svc.metrics)
    app.add_middleware(GuardMiddleware, max_body_bytes=settings.max_body_bytes,
                       body_read_timeout_s=settings.body_read_timeout_s, metrics=svc.metrics)
    return app
