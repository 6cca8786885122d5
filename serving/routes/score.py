"""POST /v1/score: click probabilities of raw candidate ids for a user (read)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Response

from serving.auth import ReadRoute
from serving.errors import FieldError
from serving.schemas import RecentEvent, ScoreRequest, ScoreResponse
from serving.scoring import Scoring
from serving.service import Service, get_service
from serving.store.base import NO_CATEGORY, History
from serving.timestamps import check_not_future

router = APIRouter(route_class=ReadRoute, tags=["read"])


def recent_history(events: list[RecentEvent]) -> History:
    """Request-only events as a History (not stored)."""
    return History(
        np.asarray([e.item_id for e in events], dtype=np.int64),
        np.asarray([NO_CATEGORY if e.category_id is None else e.category_id for e in events], dtype=np.int64),
        np.asarray([e.timestamp or 0 for e in events], dtype=np.int64),
    )


@router.post("/v1/score", response_model=ScoreResponse)
async def score(req: ScoreRequest, svc: Annotated[Service, Depends(get_service)]) -> Response:
    """Scores of `candidates` for `user_id` (stored history plus optional request-only `recent_events`)."""
    svc.need_ctr()
    limit = svc.settings.max_candidates
    if len(req.candidates) > limit:
        raise FieldError(("body", "candidates"), f"at most {limit} candidates per request, got {len(req.candidates)}")
    cats = None
    if req.context is not None and req.context.candidate_categories is not None:
        if len(req.context.candidate_categories) != len(req.candidates):
            raise FieldError(("body", "context", "candidate_categories"),
                             f"must have one entry per candidate ({len(req.candidates)}), got {len(req.context.candidate_categories)}")
        cats = np.asarray(req.context.candidate_categories, dtype=np.int64)
    recent = None
    if req.recent_events:
        check_not_future([e.timestamp for e in req.recent_events], ("body", "recent_events"), svc.settings.max_clock_skew_s)
        recent = recent_history(req.recent_events)
    raw = np.asarray(req.candidates, dtype=np.int64)
    return Response(await Scoring(svc).raw(req.user_id, raw, cats, recent), media_type="application/json")
