"""Typed settings of the scoring service (YAML via `recsys.config.load_yaml`, or built in code).

Secrets are not written in YAML: the bearer token comes from `token` or, when that is empty, the
environment variable named by `token_env` (default RECSYS_SERVING_TOKEN).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from recsys.config import StrictModel

TOKEN_ENV = "RECSYS_SERVING_TOKEN"
DEFAULT_STORE_HISTORY = 10_000


class BatchSettings(StrictModel):
    """Micro-batching of concurrent score requests: a batch closes when it holds `max_batch`
    requests or the oldest has waited `max_wait_ms`; at most `max_queue` requests wait (then 503).
    With `flush_when_idle` (default) a batch also closes as soon as no other request is queued:
    a lone request pays no batching wait, and batches form from requests that arrive while the
    previous batch is being scored. With `inline_when_alone` a batch of one request is scored on
    the event-loop thread (no thread hand-off: ~0.35 ms less per request at C=512); larger batches
    still go to the worker thread. `None` (default) = on for the embedded SQLite store, off for a
    networked store (Redis), whose cached-state check is a network round trip that would block
    the event loop."""

    max_batch: int = Field(16, ge=1, le=1024)
    max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0)
    max_queue: int = Field(1024, ge=1)
    flush_when_idle: bool = True
    inline_when_alone: bool | None = None
    #: score a group's requests (different users, jagged histories) in one batched model call
    #: (`score_candidates_batch`; models without one, and groups of one, are scored per request).
    #: None (default) = on when serving on CUDA, off on the CPU, where it measured 1.14x for SDIM
    #: but 0.83x for DARE (8 users, L=2000, C=512: the batch's [B,C,L] search scores leave the cache)
    batched_scoring: bool | None = None


class ServingSettings(StrictModel):
    """Everything `create_app` needs. Model directories are run directories (recsys.experiment)."""

    ctr_model_dir: Path | None = None
    retrieval_model_dir: Path | None = None
    #: directories under which /admin/reload may load a model (symlinks resolved); None = the parent
    #: directories of the model directories the server was started with (they and their siblings)
    reload_roots: list[Path] | None = None
    store: str = "sqlite:serving_state.sqlite3"  # sqlite:PATH or redis://host:port/db
    bootstrap_build_dir: Path | None = None  # load the build's sequences into an empty store at start-up
    #: history window (events) the CTR model is served with; None = the cap the model was trained
    #: with (its run's config.yaml `ctr.max_history`; 2000 for runs that predate that section)
    max_history: int | None = Field(None, ge=1)
    #: a `max_history` above the model's trained cap: refuse to load the model, or warn and serve
    history_above_trained: Literal["refuse", "warn"] = "refuse"
    #: events kept per user in the store (oldest by timestamp evicted); None = max_history when
    #: set, else 10,000 (the log outlives models: a later model may use a longer window)
    store_max_history: int | None = Field(None, ge=1)
    #: /v1/events idempotency window: an event_id deduplicates retries for this many seconds after
    #: its first append (then it is forgotten, bounding the store); None = forever
    event_id_ttl_s: float | None = Field(7 * 24 * 3600.0, gt=0)
    #: /v1/events and recent_events timestamps (unix seconds) later than now + this are refused
    #: with 422 naming the field; None = no check
    max_clock_skew_s: float | None = Field(300.0, ge=0.0)
    device: str = "cpu"  # CTR model + per-user states: cpu or cuda[:N] (Triton retrieval kernels on CUDA)
    max_candidates: int = Field(2_048, ge=1)
    max_events_per_request: int = Field(1_000, ge=1)
    max_body_bytes: int = Field(1 << 20, ge=1024)
    #: a request body not complete this many seconds after the request started is answered 408
    #: and its connection closed (a half-sent body cannot hold a connection forever)
    body_read_timeout_s: float = Field(10.0, gt=0.0, le=600.0)
    max_k: int = Field(500, ge=1)
    retrieval_pool: int = Field(200, ge=1)  # faiss candidates re-ranked by the CTR model
    state_cache_users: int = Field(10_000, ge=0)  # in-process LRU of per-user model states
    token: str | None = None
    token_env: str = TOKEN_ENV
    require_token_for_reads: bool = False
    batch: BatchSettings = Field(default_factory=BatchSettings)
    # plain valid /v1/score bodies skip FastAPI (serving/fastpath.py); anything else takes the route
    fast_score_path: bool = True
    torch_threads: int = Field(1, ge=1)  # intra-op threads of the server process (one request's tensors are small)
    gil_switch_interval_ms: float = Field(0.5, gt=0.0, le=100.0)
    # gc.freeze() after start-up, and gc.unfreeze() + gc.collect() + gc.freeze() after each successful
    # /admin/reload (frees the replaced model; one full-collection pause per reload), so the
    # cyclic GC's full (gen-2) collections stop traversing the ~340k long-lived objects of torch,
    # FastAPI and the models (measured on a benchmark server: 2 gen-2 pauses of 170-209 ms within
    # 6.4k requests without it); undone (gc.unfreeze) at shutdown
    gc_freeze: bool = True

    def configure_process(self) -> None:
        """Process-wide knobs for a server process (called by `recsys serve`, not by create_app,
        so tests and embedding programs keep their own): torch intra-op threads, and the GIL
        switch interval. The scoring thread releases the GIL around every torch op; with the
        default 5 ms interval the event-loop thread then holds it for up to 5 ms per op while
        requests queue (measured: 0.5 ms gives ~1.3x the throughput at concurrency 8)."""
        import sys

        import torch

        torch.set_num_threads(self.torch_threads)
        sys.setswitchinterval(self.gil_switch_interval_ms / 1000.0)

    def allowed_reload_roots(self) -> list[Path]:
        """Resolved directories under which /admin/reload may load (see `reload_roots`)."""
        if self.reload_roots is not None:
            return [Path(p).resolve() for p in self.reload_roots]
        started = [d for d in (self.ctr_model_dir, self.retrieval_model_dir) if d is not None]
        return sorted({Path(d).resolve().parent for d in started})

    def store_history(self) -> int:
        """Events the store keeps per user."""
        return self.store_max_history or self.max_history or DEFAULT_STORE_HISTORY

    def resolved_token(self) -> str | None:
        """The bearer token from config, else from the environment; None disables auth."""
        if self.token:
            return self.token
        value = os.environ.get(self.token_env, "")
        return value or None


def batched_scoring(settings: ServingSettings) -> bool:
    """Whether a group of requests is scored in one model call: `batch.batched_scoring`, or when
    unset, only on a CUDA device."""
    explicit = settings.batch.batched_scoring
    return explicit if explicit is not None else settings.device.startswith("cuda")


def inline_scoring(settings: ServingSettings, store: object) -> bool:
    """Whether a lone score request runs on the event loop: `batch.inline_when_alone`, or when
    unset, only with an embedded store (`store.embedded`: SQLite; a Redis round trip must not
    block the loop). Decided on the store in use, which may be passed to create_app directly."""
    explicit = settings.batch.inline_when_alone
    return explicit if explicit is not None else bool(getattr(store, "embedded", False))
