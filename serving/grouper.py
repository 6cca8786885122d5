"""Grouping of concurrent requests with a bounded wait (one worker-thread call per group).

The group function receives the requests together; the service's `run_score_jobs` scores a
group of requests in one batched model call (serving/scoring.py), so a group saves both the
thread hand-offs and per-request model calls.

Requests are queued; one worker takes the first, then keeps collecting until it holds
`max_batch` requests or the first has waited `max_wait_ms`, and runs the batch function once in
a worker thread. While a batch runs, new requests queue up, so under load batches form without
waiting at all. With `flush_when_idle` the worker does not wait for company: when the queue is
empty it runs what it holds at once (a lone request pays no batching delay; batches still form
from requests that arrive while the previous batch runs) - the service's default.
With `inline_when_alone` a batch of ONE request runs on the event-loop thread itself instead of
a worker thread: the hand-off (executor queue, worker wake-up, result posted back through the
loop's self-pipe) cost ~0.35 ms per request at C=512 in-process, a quarter of SDIM's scoring
time. Batches of two or more still run in the worker thread, so under concurrency the loop keeps
reading requests while a batch is scored. The batch is formed one loop iteration after the first
submit, so requests that arrived together (tasks already scheduled) join it rather than each
running alone. A full queue (`max_queue`) rejects with `Overloaded` instead of growing latency
without bound. What batching buys is measured in benchmarks/serving.py (batching on vs off).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Overloaded(RuntimeError):
    """The batch queue is full; the caller should answer 503 and the client retry later."""


class RequestGrouper(Generic[T, R]):
    """Queues requests and runs `fn` once per group of them in a worker thread (see the module docstring)."""

    def __init__(
        self,
        fn: Callable[[list[T]], list[R | BaseException]],
        max_batch: int = 16,
        max_wait_ms: float = 2.0,
        max_queue: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
        flush_when_idle: bool = False,
        inline_when_alone: bool = False,
    ) -> None:
        """`fn(items)` returns one result (or an exception for that item) per item, in order;
        `on_batch(size, seconds)` observes every batch (metrics). With `inline_when_alone`, `fn`
        must be safe to call on the event-loop thread for one item (it blocks the loop meanwhile)."""
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.flush_when_idle = flush_when_idle
        self.inline_when_alone = inline_when_alone
        self.inline_batches = 0  # batches run on the loop thread (observability and tests)
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue is not None and not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(Overloaded("server shutting down"))

    async def submit(self, item: T) -> R:
        if self._queue is None or self._task is None:
            raise RuntimeError("batcher not started")
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, fut))
        except asyncio.QueueFull:
            raise Overloaded(f"scoring queue full ({self.max_queue} requests waiting)") from None
        return await fut

    async def _run(self) -> None:
        assert self._queue is not None
        q = self._queue
        while True:
            batch = [await q.get()]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(q.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    if self.flush_when_idle:
                        break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(q.get(), timeout=left))
                except asyncio.TimeoutError:
                    break
            live = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if not live:
                continue
            t0 = time.perf_counter()
            try:
                if self.inline_when_alone and len(live) == 1:
                    self.inline_batches += 1
                    results = self.fn([live[0][0]])
                else:
                    results = await asyncio.to_thread(self.fn, [item for item, _ in live])
            except BaseException as exc:  # the whole batch failed: every caller gets the error
                if isinstance(exc, asyncio.CancelledError):
                    raise
                results = [exc] * len(live)
            if self.on_batch is not None:
                self.on_batch(len(live), time.perf_counter() - t0)
            if len(results) != len(live):  # a broken batch function must not leave callers waiting
                results = [RuntimeError(f"batch function returned {len(results)} results for {len(live)} requests")] * len(live)
            for (_, fut), res in zip(live, results):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
            # drop this batch's items and results now: kept until the next batch they would pin
            # whatever they reference (e.g. a model just replaced by a reload) while idle
            del batch, live, results
            res = None
