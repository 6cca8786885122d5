"""POST /admin/reload: load a model directory and swap it in atomically; the old model keeps
serving when the load fails (admin)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from serving.auth import WriteRoute
from serving.errors import FieldError
from serving.lifespan import freeze_long_lived
from serving.loading import ModelDirError
from serving.models import CTRScorer, Retriever
from serving.schemas import ModelRef, ReloadRequest, ReloadResponse
from serving.service import Service, get_service

log = logging.getLogger(__name__)

router = APIRouter(route_class=WriteRoute, tags=["admin"])


def allowed_dir(svc: Service, model_dir: str) -> Path:
    """`model_dir` resolved, when under one of the allowed reload roots; else 422 (the message
    does not echo the path)."""
    path = Path(model_dir).resolve()
    roots = svc.settings.allowed_reload_roots()
    if not any(path.is_relative_to(root) for root in roots):
        raise FieldError(("body", "model_dir"), "not under an allowed reload root (settings reload_roots; default: the "
                         "directories the server's models were started from), still serving the previous model")
    return path


async def load_model(svc: Service, req: ReloadRequest) -> CTRScorer | Retriever:
    """The new model, loaded and (CTR) warmed up; a load failure is a 422 naming model_dir, with
    no internal path in the message (details go to the server log)."""
    settings = svc.settings
    model_dir = allowed_dir(svc, req.model_dir)
    try:
        if req.kind == "ctr":
            scorer = await run_in_threadpool(CTRScorer.load, model_dir, settings.max_history, settings.device,
                                            settings.history_above_trained)
            await run_in_threadpool(scorer.warm_up)  # a model that cannot score is refused here
            return scorer
        return await run_in_threadpool(Retriever.load, model_dir)
    except Exception as exc:  # noqa: BLE001 - any load failure keeps the old model
        log.warning("reload of %s failed: %s", model_dir, exc)
        reason = str(exc) if isinstance(exc, ModelDirError) else f"{type(exc).__name__} (details in the server log)"
        raise FieldError(("body", "model_dir"), f"load failed, still serving the previous model: {reason}") from None


@router.post("/admin/reload", response_model=ReloadResponse)
async def reload(req: ReloadRequest, svc: Annotated[Service, Depends(get_service)]) -> ReloadResponse:
    """Swap in the model of `model_dir` (one reference assignment: atomic for readers)."""
    async with svc.reload_lock:
        new = await load_model(svc, req)
        old = svc.ctr if req.kind == "ctr" else svc.retriever
        if isinstance(new, CTRScorer):
            svc.ctr = new
            if svc.cache is not None:
                svc.cache.clear()
        else:
            svc.retriever = new
        out = ReloadResponse(
            kind=req.kind,
            model=ModelRef(name=new.info.name, version=new.info.version),
            previous=None if old is None else ModelRef(name=old.info.name, version=old.info.version),
        )
        del old  # not referenced from here on: the collection below frees it (or it would be frozen)
        if svc.settings.gc_freeze:  # one full collection (frees the old model), then freeze the new heap
            freeze_long_lived()
    return out
