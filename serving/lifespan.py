"""Start-up and shutdown of one app (FastAPI `lifespan`): store, models, bootstrap, state cache,
request grouper, GC freeze; undone in reverse at shutdown."""

from __future__ import annotations

import gc
from functools import partial
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from serving.grouper import RequestGrouper
from serving.models import CTRScorer, Retriever
from serving.scoring import run_score_jobs
from serving.service import Service
from serving.settings import batched_scoring, inline_scoring
from serving.state import StateCache
from serving.store import open_store

log = logging.getLogger(__name__)


def freeze_long_lived() -> None:
    """Collect garbage (also what earlier freezes kept, e.g. a model replaced by /admin/reload),
    then move every surviving object to the GC's permanent generation: later collections only
    traverse objects created after this (request garbage), not the model/framework heap."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def _load(svc: Service) -> None:
    """Open the store and load the configured models that were not passed in."""
    settings = svc.settings
    if svc.store is None:
        svc.store = open_store(settings.store, settings.store_history(), settings.event_id_ttl_s)
        svc.owns_store = True
    if svc.ctr is None and settings.ctr_model_dir is not None:
        svc.ctr = await run_in_threadpool(CTRScorer.load, settings.ctr_model_dir, settings.max_history, settings.device,
                                         settings.history_above_trained)
    if svc.retriever is None and settings.retrieval_model_dir is not None:
        svc.retriever = await run_in_threadpool(Retriever.load, settings.retrieval_model_dir)
    if settings.bootstrap_build_dir is not None:
        from serving.bootstrap import bootstrap_store  # pyarrow reading only when bootstrapping

        n = await run_in_threadpool(bootstrap_store, svc.store, settings.bootstrap_build_dir)
        log.info("bootstrap: loaded %d users from %s", n, settings.bootstrap_build_dir)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The app's start-up and shutdown (its Service is `app.state.svc`)."""
    svc: Service = app.state.svc
    if svc.ready:  # the grouper belongs to one event loop: one running instance per app
        raise RuntimeError("this app is already running (create_app once per server)")
    settings = svc.settings
    await _load(svc)
    assert svc.store is not None
    svc.cache = StateCache(svc.store, svc.metrics, settings.state_cache_users)

    def on_group(n: int, seconds: float) -> None:
        svc.metrics.batch_size.observe(n)
        svc.metrics.batch_latency.observe(seconds)

    b = settings.batch
    svc.grouper = RequestGrouper(partial(run_score_jobs, batched=batched_scoring(settings)), b.max_batch, b.max_wait_ms,
                                 b.max_queue, on_batch=on_group, flush_when_idle=b.flush_when_idle,
                                 inline_when_alone=inline_scoring(settings, svc.store))
    await svc.grouper.start()
    if svc.ctr is not None:
        await run_in_threadpool(partial(svc.ctr.warm_up, max_candidates=settings.max_candidates))
    if settings.gc_freeze:
        gc.freeze()  # no collection first: start-up garbage is small and a collection would stall start-up
    svc.ready = True
    try:
        yield
    finally:
        svc.ready = False
        if settings.gc_freeze:
            gc.unfreeze()
        await svc.grouper.stop()
        if svc.owns_store:
            svc.store.close()
        log.info("serving: shutdown complete (request grouper drained, store closed)")
