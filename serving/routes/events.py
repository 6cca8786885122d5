"""POST /v1/events: append behaviours; answered only once durable; idempotent on event_id (write)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, BackgroundTasks, Depends
from fastapi.concurrency import run_in_threadpool

from serving.auth import WriteRoute
from serving.errors import FieldError
from serving.schemas import EventsRequest, EventsResponse
from serving.service import Service, get_service
from serving.store.base import NO_CATEGORY, Event

router = APIRouter(route_class=WriteRoute, tags=["write"])


@router.post("/v1/events", response_model=EventsResponse)
async def events(req: EventsRequest, background: BackgroundTasks, svc: Annotated[Service, Depends(get_service)]) -> EventsResponse:
    """Store the events durably; cached user states advance after the response."""
    store = svc.need_store()
    limit = svc.settings.max_events_per_request
    if len(req.events) > limit:
        raise FieldError(("body", "events"), f"at most {limit} events per request, got {len(req.events)}")
    evs = [Event(e.event_id, e.user_id, e.item_id, e.timestamp, NO_CATEGORY if e.category_id is None else e.category_id,
                 e.event_type) for e in req.events]
    with svc.metrics.store_op("append"):
        res = await run_in_threadpool(store.append, evs)  # returns once durable
    svc.metrics.events.labels("stored").inc(len(res.stored))
    svc.metrics.events.labels("duplicate").inc(len(res.duplicates))
    unknown: list[int] = []
    scorer, cache = svc.ctr, svc.cache
    if scorer is not None:
        items = np.asarray([e.item_id for e in evs], dtype=np.int64)
        unknown = sorted(set(items[scorer.encode_items(items) == 0].tolist()))
        if res.stored and cache is not None:  # after the response: advance cached states incrementally
            stored = set(res.stored)
            for user in sorted({e.user_id for e in evs if e.event_id in stored}):
                background.add_task(run_in_threadpool, cache.get, scorer, user, True)
    return EventsResponse(stored=res.stored, duplicates=res.duplicates, unknown_items=unknown)
