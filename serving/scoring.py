"""Scoring raw candidate ids for a user: `Scoring`, shared by the /v1/score route, /v1/recommend
and the ASGI fast path (serving/fastpath.py), so they answer with the same bytes.

A request's user state is resolved through the state cache, and the scoring itself runs in the
request grouper's worker-thread call (`run_score_jobs`): concurrent requests of different users
are scored in one batched model call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson
from fastapi.concurrency import run_in_threadpool

from serving.models import CTRScorer, State, clone_state
from serving.service import Service
from serving.state import StateCache, UserState
from serving.store.base import History


@dataclass
class ScoreJob:
    scorer: CTRScorer
    cache: StateCache
    user_id: int
    user: UserState | None  # resolved before queueing (cold cache); None: look it up in the group's thread
    dense: np.ndarray  # [C] dense candidate ids (0 = unknown)
    cats: np.ndarray | None  # [C] raw candidate categories (-1 = use the item's)
    recent: History | None  # request-only events applied on a copy of the state


def job_state(job: ScoreJob) -> tuple[UserState, State]:
    """A request's user state (an O(1) store read of the event count when cached) and the state to
    score with: the request-only events applied on a copy."""
    us = job.user if job.user is not None else job.cache.get(job.scorer, job.user_id)
    state = us.state
    if job.recent is not None and len(job.recent):
        r = job.recent  # request-only events right after the stored ones (versions us.version+1..)
        state = job.scorer.append(clone_state(state), History(r.items, r.categories, r.timestamps, us.version + len(r)))
    return us, state


def run_score_jobs(jobs: list[ScoreJob], batched: bool = True) -> list[tuple[UserState, np.ndarray] | BaseException]:
    """The group function (one worker-thread call per group of requests): each request's state,
    then, per CTR model, the group's candidates scored in ONE batched model call over the users'
    jagged histories (`CTRScorer.score_many`; `batched=False` or a failure there: one call per
    request). An error is reported to its own request only."""
    out: list[tuple[UserState, np.ndarray] | BaseException] = []
    states: dict[int, tuple[UserState, State]] = {}
    for k, job in enumerate(jobs):
        try:
            states[k] = job_state(job)
            out.append(RuntimeError("not scored"))  # replaced below
        except Exception as exc:  # noqa: BLE001 - reported to that request only
            out.append(exc)
    by_model: dict[int, list[int]] = {}
    for k in states:
        by_model.setdefault(id(jobs[k].scorer), []).append(k)
    for group in by_model.values():
        scorer = jobs[group[0]].scorer
        if batched and len(group) > 1:
            try:
                probs = scorer.score_many([(states[k][1], jobs[k].dense, jobs[k].cats) for k in group])
                for k, p in zip(group, probs):
                    out[k] = (states[k][0], p)
                continue
            except Exception:  # noqa: BLE001 - retried one by one: each request gets its own outcome
                pass
        for k in group:
            try:
                out[k] = (states[k][0], scorer.score_many([(states[k][1], jobs[k].dense, jobs[k].cats)])[0])
            except Exception as exc:  # noqa: BLE001 - reported to that request only
                out[k] = exc
    return out


def first_occurrences(ids: np.ndarray) -> np.ndarray:
    """The distinct ids in order of first occurrence (a candidate sent twice is listed once)."""
    if ids.size < 2:
        return ids
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)]


def effective_length(scorer: CTRScorer, us: UserState, recent: History | None) -> int:
    """Events the model scored with: the stored ones inside the model's window, then the
    request-only ones, the newest `scorer.max_history` of them all."""
    n_recent = 0 if recent is None else len(recent)
    return min(min(us.history_length, scorer.max_history) + n_recent, scorer.max_history)


class Scoring:
    """Scores for one request with the service's current CTR model (read at each call, so a
    reload takes effect on the next request)."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc

    def ready(self) -> bool:
        """Whether requests can be scored now (started, CTR model loaded)."""
        return self.svc.ready and self.svc.ctr is not None

    async def dense(self, scorer: CTRScorer, user_id: int, dense: np.ndarray, cats: np.ndarray | None,
                    recent: History | None) -> tuple[UserState, np.ndarray]:
        """(user state, probabilities [C], NaN for dense id 0) for dense candidate ids."""
        cache, grouper = self.svc.cache, self.svc.grouper
        assert cache is not None and grouper is not None
        if grouper.inline_when_alone:
            # a lone request may be scored on the event loop: it must carry a state that needs no
            # store I/O beyond the O(1) version read; a cold or behind-the-store state (catch-up reads
            # history and may wait for a writer's fsync) is resolved in a worker thread first
            us = cache.current(scorer, user_id)
            if us is None:
                us = await run_in_threadpool(cache.get, scorer, user_id)
        else:
            # warm: the group's thread checks the cached state against the store's event count (O(1));
            # cold: load/encode it here first so a long history does not stall other users' group
            us = None if cache.contains(scorer, user_id) else await run_in_threadpool(cache.get, scorer, user_id)
        return await grouper.submit(ScoreJob(scorer, cache, user_id, us, dense, cats, recent))

    async def raw(self, user_id: int, raw: np.ndarray, cats: np.ndarray | None = None,
                  recent: History | None = None) -> bytes:
        """The JSON body of a ScoreResponse for raw candidate ids (route and fast path alike)."""
        scorer = self.svc.need_ctr()
        dense = scorer.encode_items(raw)
        us, probs = await self.dense(scorer, user_id, dense, cats, recent)
        # the ScoreResponse schema (documented on the route), serialised directly: the values are
        # built here with the right types, so FastAPI's re-validation of 512 floats is skipped;
        # NaN (unknown candidate) -> null
        body = {
            "user_id": user_id,
            "scores": probs,
            "model": {"name": scorer.info.name, "version": scorer.info.version},
            "unknown_items": first_occurrences(raw[dense == 0]),
            "cold_start": us.version == 0,
            "history_length": us.history_length,
            "effective_history_length": effective_length(scorer, us, recent),
        }
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
