"""What one app instance owns (`Service`, kept on `app.state.svc`: no module-level state) and the
dependency that hands it to the routes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import Request

from serving.errors import Unavailable
from serving.grouper import RequestGrouper
from serving.metrics import Metrics
from serving.models import CTRScorer, Retriever
from serving.settings import ServingSettings
from serving.state import StateCache
from serving.store.base import UserStore


@dataclass
class Service:
    """Models, store, state cache and request grouper of one app; filled in by the lifespan."""

    settings: ServingSettings
    metrics: Metrics
    store: UserStore | None = None
    ctr: CTRScorer | None = None
    retriever: Retriever | None = None
    cache: StateCache | None = None
    grouper: RequestGrouper[Any, Any] | None = None  # serving.scoring.ScoreJob -> (UserState, scores)
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

    def need_store(self) -> UserStore:
        if self.store is None:
            raise Unavailable("the user store is not open (server starting or stopping)")
        return self.store


def get_service(request: Request) -> Service:
    """FastAPI dependency: the app's Service."""
    svc: Service = request.app.state.svc
    return svc
