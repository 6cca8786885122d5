"""Request and response bodies (pydantic). Strict: a string where a number belongs, an unknown
field or an id outside int64 is a 422 whose `detail` names the field. The configured limits
(`max_candidates`, `max_events_per_request`, `max_k`) are checked by the app on top of the hard
schema caps below and answered with the same 422 shape."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

INT64_MAX = 2**63 - 1
HARD_MAX_CANDIDATES = 10_000
HARD_MAX_EVENTS = 10_000

RawId = Annotated[int, Field(ge=0, le=INT64_MAX, description="raw (source) id, 0 <= id < 2^63")]
Timestamp = Annotated[int, Field(ge=0, le=INT64_MAX, description="unix seconds (or order index)")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelRef(BaseModel):
    name: str
    version: str


class RecentEvent(Body):
    """A behaviour not yet sent to /v1/events; used for this request only (not stored)."""

    item_id: RawId
    category_id: RawId | None = None
    timestamp: Timestamp | None = None


class ScoreContext(Body):
    candidate_categories: list[RawId] | None = Field(
        None, max_length=HARD_MAX_CANDIDATES,
        description="raw category per candidate (same order); default: the item's category in the model's build",
    )


class ScoreRequest(Body):
    user_id: RawId
    candidates: list[RawId] = Field(min_length=1, max_length=HARD_MAX_CANDIDATES, description="raw item ids to score")
    context: ScoreContext | None = None
    recent_events: list[RecentEvent] | None = Field(None, max_length=1000)


class ScoreResponse(BaseModel):
    user_id: int
    scores: list[float | None] = Field(description="click probability per candidate; null for unknown items")
    model: ModelRef
    unknown_items: list[int] = Field(description="distinct candidates the model's vocabulary does not know (score null), "
                                                 "in order of first occurrence")
    cold_start: bool = Field(description="true when the user has no stored history (scored with an empty history)")
    history_length: int = Field(description="events stored for the user (retained in the store)")
    effective_history_length: int = Field(description="events the model scored with: the stored ones inside the "
                                                      "model's history window plus recent_events, capped at the window")


class RecommendRequest(Body):
    user_id: RawId
    k: int = Field(10, ge=1, le=1000)
    exclude_seen: bool = True


class Recommendation(BaseModel):
    item_id: int
    retrieval_score: float = Field(description="inner product of user and item embedding (next-item model)")
    ctr_score: float = Field(description="click probability (CTR model)")


class RecommendResponse(BaseModel):
    user_id: int
    items: list[Recommendation]
    retrieval_model: ModelRef
    ctr_model: ModelRef


class EventIn(Body):
    event_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$", description="idempotency key")
    user_id: RawId
    item_id: RawId
    timestamp: Timestamp
    category_id: RawId | None = None
    event_type: str | None = Field(None, max_length=32)


class EventsRequest(Body):
    events: list[EventIn] = Field(min_length=1, max_length=HARD_MAX_EVENTS)


class EventsResponse(BaseModel):
    stored: list[str] = Field(description="event ids stored by this request (durable)")
    duplicates: list[str] = Field(description="event ids already stored before with the same payload (durable, not stored twice)")
    unknown_items: list[int] = Field(description="item ids the current CTR model does not know (stored, not yet used)")


class ReloadRequest(Body):
    model_dir: str = Field(min_length=1, max_length=4096)
    kind: Literal["ctr", "retrieval"] = "ctr"


class ReloadResponse(BaseModel):
    kind: str
    model: ModelRef
    previous: ModelRef | None


class Health(BaseModel):
    status: str
    detail: dict[str, str | bool | int | None] = {}
