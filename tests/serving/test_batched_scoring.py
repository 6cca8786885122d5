"""Concurrent /v1/score requests of different users are scored in ONE batched model call over
their jagged histories, with the scores of one-at-a-time scoring."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from serving.app import create_app
from serving.metrics import Metrics
from serving.scoring import ScoreJob, run_score_jobs
from serving.settings import BatchSettings, ServingSettings
from serving.state import StateCache
from serving.store import Event, open_store
from serving.store.base import History
from tests.serving import models as M

K = M.RAW_ITEMS.tolist()


@pytest.mark.parametrize("name", ["sdim", "dare"])
def test_model_batch_equals_one_user_at_a_time(name: str) -> None:
    model = M.ctr_scorer(name, init_std=0.3).model
    rng = np.random.default_rng(1)
    states, items, cats = [], [], []
    for length, n_cands in ((0, 3), (5, 7), (23, 1), (2, 5), (9, 9)):  # a cold user, jagged histories and candidates
        with torch.inference_mode():
            states.append(model.encode_user(torch.from_numpy(rng.integers(1, 61, length)), torch.from_numpy(rng.integers(1, 7, length))))
        items.append(torch.from_numpy(rng.integers(1, 61, n_cands)))
        cats.append(torch.from_numpy(rng.integers(0, 7, n_cands)))
    with torch.inference_mode():
        one = [model.score_candidates(s, i, c) for s, i, c in zip(states, items, cats)]
        many = model.score_candidates_batch(states, items, cats)
    assert [t.shape for t in many] == [t.shape for t in one]
    for a, b in zip(one, many):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sdim", "dare"])
def test_group_of_requests_is_one_model_call_with_the_same_scores(tmp_path: Path, name: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(f"sqlite:{tmp_path / 's.sqlite3'}", max_history=50)
    scorer = M.ctr_scorer(name, init_std=0.3)
    rng = np.random.default_rng(2)
    try:
        for user, length in ((1, 12), (2, 3), (3, 30)):
            store.append([Event(f"{user}-{t}", user, int(rng.choice(K)), t) for t in range(length)])
        cache = StateCache(store, Metrics())
        cands = [np.array([K[0], 999_999, K[5], K[7]]), np.array([K[1]]), np.array([K[2], K[3], 5]), np.array([777]),
                 np.array(K[10:40])]
        recent = History(np.array([K[9], K[11]]), np.array([-1, -1]), np.array([0, 0]))
        jobs = [ScoreJob(scorer, cache, user, None, scorer.encode_items(c), None, r)
                for user, c, r in ((1, cands[0], None), (2, cands[1], recent), (3, cands[2], None), (4, cands[3], None),
                                   (5, cands[4], None))]  # users 4 and 5: cold; user 4: no known candidate
        calls = []
        real = scorer.model.score_candidates_batch
        monkeypatch.setattr(scorer.model, "score_candidates_batch", lambda *a: calls.append(len(a[0])) or real(*a))
        grouped = run_score_jobs(jobs)
        assert calls == [4]  # one model call for the four users with a known candidate
        alone = run_score_jobs(jobs, batched=False)
        assert calls == [4]
        for (us_g, p_g), (us_a, p_a), c in zip(grouped, alone, cands):
            assert us_g.version == us_a.version and p_g.shape == c.shape
            np.testing.assert_array_equal(np.isnan(p_g), scorer.encode_items(c) == 0)
            np.testing.assert_allclose(p_g, p_a, rtol=1e-5, atol=1e-7)
    finally:
        store.close()


def test_concurrent_requests_through_the_app_share_one_model_call(tmp_path: Path) -> None:
    settings = ServingSettings(store=f"sqlite:{tmp_path / 's.sqlite3'}", token="t",
                               batch=BatchSettings(max_batch=8, max_wait_ms=500, flush_when_idle=False, inline_when_alone=False,
                                                   batched_scoring=True))
    scorer = M.ctr_scorer("sdim", init_std=0.3)
    app = create_app(settings, ctr=scorer)
    calls: list[int] = []
    real = scorer.model.score_candidates_batch
    scorer.model.score_candidates_batch = lambda *a: calls.append(len(a[0])) or real(*a)
    bodies = [{"user_id": u, "candidates": K[u: u + 3 + u]} for u in range(6)]

    async def main() -> list[dict]:
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
                events = [{"event_id": f"{u}-{t}", "user_id": u, "item_id": K[(u * 7 + t) % 60], "timestamp": t}
                          for u in range(6) for t in range(2 * u)]  # jagged: 0..10 events
                assert (await c.post("/v1/events", json={"events": events}, headers={"Authorization": "Bearer t"})).status_code == 200
                for u in range(6):  # warm every user's cached state, one request at a time
                    await c.post("/v1/score", json=bodies[u])
                calls.clear()
                together = await asyncio.gather(*(c.post("/v1/score", json=b) for b in bodies))
                one_by_one = [await c.post("/v1/score", json=b) for b in bodies]
                return [r.json() for r in together], [r.json() for r in one_by_one]

    together, one_by_one = asyncio.run(main())
    assert calls[0] == 6  # the six concurrent requests: one model call
    for a, b in zip(together, one_by_one):
        assert a["history_length"] == b["history_length"]
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-7)


def test_batched_scoring_defaults_to_cuda_only() -> None:
    from serving.settings import batched_scoring

    assert not batched_scoring(ServingSettings())
    assert batched_scoring(ServingSettings(device="cuda"))
    assert batched_scoring(ServingSettings(batch=BatchSettings(batched_scoring=True)))
    assert not batched_scoring(ServingSettings(device="cuda:0", batch=BatchSettings(batched_scoring=False)))


def test_warm_up_every_length_encodes_each_bucket_and_scores_both_candidate_counts(monkeypatch) -> None:
    """`warm_up(every_length=True)` (the CUDA default) runs the model once per history-length
    bucket up to max_history (kernels.warmup.length_buckets) at 1 and max_candidates candidates,
    so no kernel variant is compiled on the request path; on CPU the default skips it."""
    from kernels.warmup import length_buckets
    from tests.serving.models import ctr_scorer

    for name in ("sdim", "dare"):
        scorer = ctr_scorer(name, max_history=300)
        encoded, scored = [], []
        encode, score = scorer.encode, scorer.score
        monkeypatch.setattr(scorer, "encode", lambda h, f=encode: (encoded.append(len(h)), f(h))[1])
        monkeypatch.setattr(scorer, "score", lambda s, c, *a, f=score: (scored.append(len(c)), f(s, c, *a))[1])
        scorer.warm_up()  # CPU default: the empty-history call only
        assert encoded == [0] and scored == [1]
        encoded.clear(), scored.clear()
        scorer.warm_up(every_length=True, max_candidates=7)
        assert encoded == [0] + length_buckets(300) and max(encoded) == 300
        assert scored == [1] + [c for _ in length_buckets(300) for c in (1, 7)]
