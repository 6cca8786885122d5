"""Soak: a bounded steady-rate run (default 5 minutes, 20 requests/s: 3 score requests per event
write) against a real uvicorn server (SDIM, SQLite store); no errors allowed, server RSS growth
from the end of warm-up to the end must stay under 10%.

    .venv/bin/python -m benchmarks.soak            # writes benchmarks/results/serving_soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.serving import CANDS, NUM_ITEMS, fill_store, free_port, start


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def soak(port: int, pid: int, seconds: float, rate: float, warmup: float) -> dict:
    import httpx

    rng = np.random.default_rng(3)
    errors, sent, lat = 0, 0, []
    headers = {"Authorization": "Bearer bench"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

        async def one(k: int) -> None:
            nonlocal errors
            t0 = time.perf_counter()
            if k % 4 == 3:  # an event for one of 50 users
                ev = {"event_id": f"soak-{k}", "user_id": 100 + k % 50, "item_id": int(rng.integers(1, NUM_ITEMS + 1)), "timestamp": k}
                r = await client.post("/v1/events", json={"events": [ev]}, headers=headers)
            else:
                user = [1, 2, 3, 100 + k % 50][k % 4]
                r = await client.post("/v1/score", json={"user_id": user, "candidates": rng.integers(1, NUM_ITEMS + 1, CANDS[0]).tolist()})
            lat.append(time.perf_counter() - t0)
            errors += r.status_code != 200

        start_t = time.perf_counter()
        tasks, rss_start = [], None
        while (now := time.perf_counter() - start_t) < seconds:
            if rss_start is None and now >= warmup:
                rss_start = rss_mb(pid)
            tasks.append(asyncio.create_task(one(sent)))
            sent += 1
            await asyncio.sleep(max(0.0, sent / rate - (time.perf_counter() - start_t)))
        await asyncio.gather(*tasks)
    a = np.asarray(lat) * 1e3
    return {"sent": sent, "errors": errors, "rss_start": rss_start, "rss_end": rss_mb(pid),
            "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=30.0)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    db = Path(tempfile.mkdtemp(prefix="bench_soak_")) / "state.sqlite3"
    fill_store(db)
    port = free_port()
    proc = start("sdim", db, port, 16)
    try:
        res = asyncio.run(soak(port, proc.pid, args.seconds, args.rate, args.warmup))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    growth = (res["rss_end"] - res["rss_start"]) / res["rss_start"]
    print(res, f"rss growth {growth:.3%}")
    if args.no_write:
        return
    from benchmarks.results import row, write_rows

    proto = (f"soak: {args.seconds:.0f} s at {args.rate:g} req/s (3 score C=100 : 1 event), uvicorn 1 worker, SQLite store, "
             f"SDIM freshly initialised, n={res['sent']}")
    cmd = ".venv/bin/python -m benchmarks.soak"
    rows = [
        row(name="serving_soak", model="sdim", dataset="synthetic ids", protocol=proto, metric="errors", value=res["errors"], reference=0, seed=3, command=cmd),
        row(name="serving_soak", model="sdim", dataset="synthetic ids", protocol=proto + f", RSS after {args.warmup:g} s warm-up vs end",
            metric="rss_growth", value=round(growth, 4), reference=0.10, ratio=round(growth / 0.10, 4), seed=3, command=cmd),
        row(name="serving_soak", model="sdim", dataset="synthetic ids", protocol=proto, metric="p99_ms", value=round(res["p99_ms"], 3), seed=3, command=cmd),
    ]
    print(write_rows("serving_soak", rows))


if __name__ == "__main__":
    main()
