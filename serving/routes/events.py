"""POST /v1/events: append behaviours; answered only once durable; idempotent on event_id (write).

Rules (README "Scoring API"): a user's events are modelled in timestamp order, ties in arrival
order (a late event is placed by its timestamp and the user's cached state rebuilt); a timestamp
later than now + `max_clock_skew_s` is refused (422); an event_id reused within the idempotency
window with the same payload is a duplicate (200, listed in `duplicates`), with another payload a
409 naming the id, and nothing of that request is stored."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, BackgroundTasks, Depends
from fastapi.concurrency import run_in_threadpool

from serving.auth import WriteRoute
from serving.errors import FieldError
from serving.schemas import EventsRequest, EventsResponse
from serving.service import Service, get_service
from serving.store.base import NO_CATEGORY, Event, EventIdConflict
from serving.timestamps import check_not_future

router = APIRouter(route_class=WriteRoute, tags=["write"])


@router.post("/v1/events", response_model=EventsResponse)
async def events(req: EventsRequest, background: BackgroundTasks, svc: Annotated[Service, Depends(get_service)]) -> EventsResponse:
    """Store the events durably; cached user states advance after the response."""
    store = svc.need_store()
    limit = svc.settings.max_events_per_request
    if len(req.events) > limit:
        raise FieldError(("body", "events"), f"at most {limit} events per request, got {len(req.events)}")
    check_not_future([e.timestamp for e in req.events], ("body", "events"), svc.settings.max_clock_skew_s)
    evs = [Event(e.event_id, e.user_id, e.item_id, e.timestamp, NO_CATEGORY if e.category_id is None else e.category_id,
                 e.event_type) for e in req.events]
    try:
        with svc.metrics.store_op("append"):
            res = await run_in_threadpool(store.append, evs)  # returns once durable
    except EventIdConflict as exc:
        first = next(i for i, e in enumerate(evs) if e.event_id in exc.event_ids)
        svc.metrics.events.labels("conflict").inc(len(exc.event_ids))
        raise FieldError(("body", "events", first, "event_id"),
                         f"event_id already stored with a different payload (user, item, timestamp, category or type): "
                         f"{', '.join(exc.event_ids)}; nothing in this request was stored", 409) from None
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
