"""Prometheus metrics of one app instance (its own registry: no global state, so several apps
in one process - tests, Ray replicas - do not collide)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "recsys_requests_total", "HTTP requests by endpoint and status", ["endpoint", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "recsys_request_latency_seconds", "HTTP request latency per endpoint", ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.batch_size = Histogram(
            "recsys_batch_size", "score requests per model micro-batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry
        )
        self.batch_latency = Histogram(
            "recsys_batch_latency_seconds", "model time per micro-batch", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.store_latency = Histogram(
            "recsys_store_latency_seconds", "user-state store operation latency", ["op"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.events = Counter("recsys_events_total", "events received", ["result"], registry=self.registry)
        self.state_cache = Counter(
            "recsys_state_cache_total", "per-user model state lookups by outcome", ["outcome"], registry=self.registry
        )
        self.fast_path = Counter(
            "recsys_fast_path_total", "POST /v1/score requests by path: served by the fast path or passed to the FastAPI route",
            ["outcome"], registry=self.registry
        )

    @contextmanager
    def store_op(self, op: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.store_latency.labels(op).observe(time.perf_counter() - t0)
