"""Micro-batcher: batches form under concurrency, the wait is bounded, errors stay per item."""

from __future__ import annotations

import asyncio
import time

import pytest

from serving.grouper import RequestGrouper, Overloaded


def run(coro):
    return asyncio.run(coro)


def test_batches_form_and_results_stay_in_order() -> None:
    sizes: list[int] = []

    def fn(items: list[int]) -> list[int]:
        time.sleep(0.01)
        return [x * 2 for x in items]

    async def main() -> list[int]:
        b = RequestGrouper(fn, max_batch=8, max_wait_ms=20, on_batch=lambda n, s: sizes.append(n))
        await b.start()
        out = await asyncio.gather(*(b.submit(i) for i in range(20)))
        await b.stop()
        return out

    assert run(main()) == [2 * i for i in range(20)]
    assert max(sizes) == 8 and sum(sizes) == 20 and len(sizes) < 20


def test_wait_is_bounded_for_a_lone_request() -> None:
    async def main() -> float:
        b = RequestGrouper(lambda xs: xs, max_batch=64, max_wait_ms=30)
        await b.start()
        t0 = time.perf_counter()
        await b.submit(1)
        dt = time.perf_counter() - t0
        await b.stop()
        return dt

    dt = run(main())
    assert 0.025 <= dt < 0.5


def test_per_item_errors_and_overload() -> None:
    def fn(items: list[int]) -> list[int | BaseException]:
        return [ValueError(f"bad {x}") if x < 0 else x for x in items]

    async def main() -> None:
        b = RequestGrouper(fn, max_batch=4, max_wait_ms=5)
        await b.start()
        ok, bad = await asyncio.gather(b.submit(3), b.submit(-1), return_exceptions=True)
        assert ok == 3 and isinstance(bad, ValueError) and "bad -1" in str(bad)
        await b.stop()

        slow = RequestGrouper(lambda xs: (time.sleep(0.2), xs)[1], max_batch=1, max_wait_ms=0, max_queue=2)
        await slow.start()
        tasks = [asyncio.create_task(slow.submit(i)) for i in range(6)]
        res = await asyncio.gather(*tasks, return_exceptions=True)
        assert any(isinstance(r, Overloaded) for r in res) and any(r == 0 for r in res)
        await slow.stop()

    run(main())


def test_flush_when_idle_adds_no_wait_and_still_batches() -> None:
    sizes: list[int] = []

    def fn(items: list[int]) -> list[int]:
        time.sleep(0.01)
        return [x + 1 for x in items]

    async def main() -> tuple[float, list[int]]:
        b = RequestGrouper(fn, max_batch=8, max_wait_ms=200, flush_when_idle=True, on_batch=lambda n, s: sizes.append(n))
        await b.start()
        t0 = time.perf_counter()
        assert await b.submit(1) == 2
        lone = time.perf_counter() - t0
        out = await asyncio.gather(*(b.submit(i) for i in range(20)))  # arrive while batches run
        await b.stop()
        return lone, out

    lone, out = run(main())
    assert lone < 0.15  # far below max_wait_ms=200: the lone request did not wait for company
    assert out == [i + 1 for i in range(20)]
    assert sizes[0] == 1 and max(sizes) > 1 and sum(sizes) == 21


def test_inline_when_alone_runs_a_lone_request_on_the_loop_and_batches_in_the_thread() -> None:
    import threading

    seen: list[tuple[int, int]] = []  # (batch size, thread id)

    def fn(items: list[int]) -> list[int | BaseException]:
        seen.append((len(items), threading.get_ident()))
        time.sleep(0.01)
        return [ValueError(f"bad {x}") if x < 0 else x * 10 for x in items]

    async def main() -> tuple[int, list]:
        b = RequestGrouper(fn, max_batch=8, max_wait_ms=200, flush_when_idle=True, inline_when_alone=True)
        await b.start()
        assert await b.submit(1) == 10
        with pytest.raises(ValueError, match="bad -2"):  # a lone request's error is still its own
            await b.submit(-2)
        out = await asyncio.gather(*(b.submit(i) for i in range(6)))  # arrive together: one batch
        await b.stop()
        return threading.get_ident(), [out, b.inline_batches]

    loop_thread, (out, inline) = run(main())
    assert out == [i * 10 for i in range(6)]
    assert inline == 2
    assert seen[0] == (1, loop_thread) and seen[1] == (1, loop_thread)  # lone: no thread hand-off
    assert seen[2][0] == 6 and seen[2][1] != loop_thread  # requests that arrived together: batch thread
    assert sum(n for n, _ in seen) == 8


def test_without_inline_every_batch_runs_in_the_thread() -> None:
    import threading

    threads: list[int] = []

    async def main() -> int:
        b = RequestGrouper(lambda xs: (threads.append(threading.get_ident()), xs)[1], flush_when_idle=True)
        await b.start()
        assert await b.submit(5) == 5
        await b.stop()
        return threading.get_ident()

    loop_thread = run(main())
    assert len(threads) == 1 and threads[0] != loop_thread


def test_inline_scoring_defaults_to_the_embedded_store_only() -> None:
    from serving.settings import ServingSettings, inline_scoring
    from serving.store.redis import RedisStore
    from serving.store.sqlite import SQLiteStore

    sqlite, redis = object.__new__(SQLiteStore), object.__new__(RedisStore)  # the class decides, no I/O
    default = ServingSettings()
    assert inline_scoring(default, sqlite) and not inline_scoring(default, redis)
    forced = ServingSettings.model_validate({"batch": {"inline_when_alone": True}})
    assert inline_scoring(forced, redis)
    off = ServingSettings.model_validate({"batch": {"inline_when_alone": False}})
    assert not inline_scoring(off, sqlite)


def test_a_batch_function_returning_too_few_results_fails_its_callers_and_the_batcher_lives_on() -> None:
    calls: list[int] = []

    def fn(items: list[int]) -> list[int]:
        calls.append(len(items))
        return [] if len(calls) == 1 else [x + 1 for x in items]

    async def main() -> int:
        b = RequestGrouper(fn, flush_when_idle=True, inline_when_alone=True)
        await b.start()
        with pytest.raises(RuntimeError, match="returned 0 results for 1 requests"):
            await asyncio.wait_for(b.submit(1), timeout=5)
        out = await asyncio.wait_for(b.submit(2), timeout=5)  # the worker task survived
        await b.stop()
        return out

    assert run(main()) == 3
