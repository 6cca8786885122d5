"""POST /v1/recommend: faiss retrieval from the next-item model, CTR re-rank, top-k (read)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from serving.auth import ReadRoute
from serving.errors import FieldError
from serving.schemas import ModelRef, Recommendation, RecommendRequest, RecommendResponse
from serving.scoring import Scoring
from serving.service import Service, get_service

router = APIRouter(route_class=ReadRoute, tags=["read"])


@router.post("/v1/recommend", response_model=RecommendResponse)
async def recommend(req: RecommendRequest, svc: Annotated[Service, Depends(get_service)]) -> RecommendResponse:
    """Top-k items for a user with a stored history (404 naming `user_id` on cold start)."""
    scorer, retr, store = svc.need_ctr(), svc.need_retriever(), svc.need_store()
    settings = svc.settings
    if req.k > settings.max_k:
        raise FieldError(("body", "k"), f"k must be <= {settings.max_k}, got {req.k}")
    with svc.metrics.store_op("history"):
        h = await run_in_threadpool(store.history, req.user_id)
    if len(h) == 0:
        raise FieldError(("body", "user_id"), f"user {req.user_id} has no stored history (cold start): send /v1/events first", 404)
    exclude = set(h.items.tolist()) if req.exclude_seen else set()
    try:
        raw, rscores = await run_in_threadpool(retr.candidates, h, max(settings.retrieval_pool, req.k), exclude)
    except LookupError as exc:
        raise FieldError(("body", "user_id"), str(exc), 404) from None
    dense = scorer.encode_items(raw)
    _, probs = await Scoring(svc).dense(scorer, req.user_id, dense, None, None)
    probs = np.where(np.isnan(probs), -1.0, probs)  # items the CTR model does not know rank last
    order = np.argsort(-probs, kind="stable")[: req.k]
    return RecommendResponse(
        user_id=req.user_id,
        items=[Recommendation(item_id=int(raw[i]), retrieval_score=float(rscores[i]), ctr_score=float(max(probs[i], 0.0)))
               for i in order],
        retrieval_model=ModelRef(name=retr.info.name, version=retr.info.version),
        ctr_model=ModelRef(name=scorer.info.name, version=scorer.info.version),
    )
