"""GET /healthz (process up), /readyz (models and store loaded), /metrics (Prometheus)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.schemas import Health
from serving.service import Service, get_service

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(svc: Annotated[Service, Depends(get_service)]) -> Any:
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
    ok = svc.ready and store_ok and svc.ctr is not None and (svc.settings.retrieval_model_dir is None or svc.retriever is not None)
    body = Health(status="ready" if ok else "not ready", detail=detail)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response)
async def metrics(svc: Annotated[Service, Depends(get_service)]) -> Response:
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
