"""Serving latency: a bounded async-httpx load generator on loopback against a real uvicorn
server (one worker, SQLite store, per-user model state cached), for SDIM and DARE.

Grid: concurrency {1, 8, 64} x candidates C {100, 512} x history L {100, 2000, 10000}; p50/p99
latency and throughput per cell (each cell runs `--seconds` or `--max-requests`, whichever ends
first, after a warm-up). Also: in-process scoring time (the same cached state, no HTTP) for the
HTTP+validation overhead ratio, and micro-batching on vs off (max_batch 16 vs 1) at concurrency 64.
Weights are freshly initialised (latency does not depend on their values); ids are synthetic.

    .venv/bin/python -m benchmarks.serving            # full grid, writes benchmarks/results/serving.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NUM_ITEMS, NUM_CATS = 50_000, 100
LENGTHS = (100, 2000, 10_000)
CANDS = (100, 512)
CONCURRENCY = (1, 8, 64)
MODEL_CFGS = {
    # SDIM's online setting (m=48 hashes, tau=3: 16 signatures x 8 buckets), DARE's paper dims
    "sdim": {"name": "sdim", "item_dim": 16, "cat_dim": 16, "num_hashes": 48, "tau": 3, "short_len": 16},
    "dare": {"name": "dare", "item_dim": 16, "cat_dim": 16, "pos_dim": 16, "top_k": 20},
}


def make_scorer(model: str, max_history: int = 10_000):
    import torch

    from recsys.data.vocab import Vocabulary
    from recsys.models.registry import build_model, parse_model_config
    from serving.models import CTRScorer, ModelInfo

    torch.manual_seed(0)
    m = build_model(parse_model_config(dict(MODEL_CFGS[model])), NUM_ITEMS, NUM_CATS).eval()
    vocabs = {"users": Vocabulary(np.arange(1, 4)), "items": Vocabulary(np.arange(1, NUM_ITEMS + 1)),
              "categories": Vocabulary(np.arange(1, NUM_CATS + 1))}
    cats = np.concatenate([[0], (np.arange(NUM_ITEMS) % NUM_CATS) + 1])
    return CTRScorer(m, vocabs, ModelInfo(model, "init-seed0", "<benchmark>"), cats, max_history)


def fill_store(db: Path) -> None:
    """Users 1..3 with L = 100 / 2000 / 10000 random raw items (ids = dense ids here)."""
    from serving.store.sqlite import SQLiteStore

    rng = np.random.default_rng(0)
    store = SQLiteStore(db)
    for user, length in enumerate(LENGTHS, start=1):
        store.bulk_load(user, rng.integers(1, NUM_ITEMS + 1, length), np.full(length, -1), np.arange(length))
    store.close()


def worker(args: argparse.Namespace) -> None:
    import uvicorn

    from serving.app import create_app
    from serving.settings import BatchSettings, ServingSettings

    settings = ServingSettings(store=f"sqlite:{args.db}", token="bench", max_candidates=1024,
                               batch=BatchSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms))
    settings.configure_process()  # as `recsys serve` does: 1 torch thread, 0.5 ms GIL switch interval
    uvicorn.run(create_app(settings, ctr=make_scorer(args.model)), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)


async def load(port: int, user: int, cands: list[list[int]], concurrency: int, seconds: float, max_requests: int) -> dict:
    import httpx

    lat: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=600) as client:
        for c in cands[:3]:  # warm-up (also caches the user's state)
            (await client.post("/v1/score", json={"user_id": user, "candidates": c})).raise_for_status()
        deadline = time.perf_counter() + seconds
        sent = 0

        async def one(k: int) -> None:
            nonlocal errors, sent
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                t0 = time.perf_counter()
                r = await client.post("/v1/score", json={"user_id": user, "candidates": cands[sent % len(cands)]})
                lat.append(time.perf_counter() - t0)
                errors += r.status_code != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(one(k) for k in range(concurrency)))
        wall = time.perf_counter() - t0
    a = np.asarray(lat) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "rps": len(a) / wall,
            "n": len(a), "errors": errors}


def in_process_ms(model: str, db: Path, length_user: int, c: int, reps: int = 50) -> float:
    """Median in-process scoring time (cached state, ids -> probabilities), no HTTP."""
    from serving.store.sqlite import SQLiteStore

    scorer = make_scorer(model)
    store = SQLiteStore(db)
    state = scorer.encode(store.history(length_user))
    store.close()
    rng = np.random.default_rng(1)
    times = []
    for _ in range(reps):
        raw = rng.integers(1, NUM_ITEMS + 1, c)
        t0 = time.perf_counter()
        dense = scorer.encode_items(raw)
        scorer.score(state, dense)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def start(model: str, db: Path, port: int, max_batch: int) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.serving", "--worker", "--model", model, "--db", str(db),
                             "--port", str(port), "--max-batch", str(max_batch)], env=env)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise TimeoutError("benchmark server did not become ready")


def app_seconds(port: int) -> tuple[float, float]:
    """(sum, count) of the server's own /v1/score latency histogram (GuardMiddleware, /metrics)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    total = count = 0.0
    for fam in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=60).text):
        for s in fam.samples:
            if s.labels.get("endpoint") == "/v1/score" and s.name.endswith("_sum"):
                total = s.value
            elif s.labels.get("endpoint") == "/v1/score" and s.name.endswith("_count") and fam.name == "recsys_request_latency_seconds":
                count = s.value
    return total, count


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="sdim")
    p.add_argument("--models", default="sdim,dare")
    p.add_argument("--db")
    p.add_argument("--port", type=int)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--max-requests", type=int, default=1500)
    p.add_argument("--cands", default=",".join(map(str, CANDS)), help="grid subset, e.g. 512")
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="grid subset of 100,2000,10000")
    p.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="grid subset, e.g. 1,8")
    p.add_argument("--out", default="serving", help="result name (benchmarks/results/<out>.json)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    from benchmarks.results import row, write_rows

    cands_grid = tuple(int(x) for x in args.cands.split(","))
    lengths_grid = tuple(int(x) for x in args.lengths.split(","))
    conc_grid = tuple(int(x) for x in args.concurrency.split(","))
    assert set(lengths_grid) <= set(LENGTHS), f"--lengths: subset of {LENGTHS}"
    command = ".venv/bin/python -m benchmarks.serving " + " ".join(
        f"--{k} {v}" for k, v in (("models", args.models), ("cands", args.cands), ("lengths", args.lengths),
                                  ("concurrency", args.concurrency), ("out", args.out)))
    tmp = Path(tempfile.mkdtemp(prefix="bench_serving_"))
    db = tmp / "state.sqlite3"
    fill_store(db)
    rng = np.random.default_rng(2)
    cand_sets = {c: [rng.integers(1, NUM_ITEMS + 1, c).tolist() for _ in range(32)] for c in sorted({*cands_grid, 100, 512})}
    rows = []
    base = ("loopback HTTP POST /v1/score, httpx async client in a separate process, uvicorn 1 worker (uvloop+httptools),"
            " SQLite store, cached per-user state, freshly initialised weights")

    def add(model: str, protocol: str, metric: str, value: float, reference: float | None = None) -> None:
        ratio = None if reference in (None, 0) else value / reference
        rows.append(row(name=args.out, model=model, dataset=f"synthetic ids ({NUM_ITEMS} items)", protocol=protocol,
                        metric=metric, value=round(value, 4), reference=None if reference is None else round(reference, 4),
                        ratio=None if ratio is None else round(ratio, 4), seed=0, command=command))
        print(f"{model:5s} {protocol[len(base):] if protocol.startswith(base) else protocol:60s} {metric:10s} {value:9.3f}"
              + ("" if reference is None else f"  ref {reference:.3f}  ratio {ratio:.3f}"), flush=True)

    for model in args.models.split(","):
        port = free_port()
        proc = start(model, db, port, args.max_batch)
        try:
            p99 = {}
            for c in cands_grid:
                for user, length in enumerate(LENGTHS, start=1):
                    if length not in lengths_grid:
                        continue
                    for conc in conc_grid:
                        load1 = os.getloadavg()[0]
                        res = asyncio.run(load(port, user, cand_sets[c], conc, args.seconds, args.max_requests))
                        assert res["errors"] == 0, res
                        proto = f"{base}, C={c}, L={length}, concurrency={conc}, n={res['n']}, 2-core load avg {load1:.1f}"
                        target = 20.0 if (model == "sdim" and c == 512 and length == 10_000 and conc == 8) else None
                        add(model, proto, "p50_ms", res["p50_ms"])
                        add(model, proto, "p99_ms", res["p99_ms"], target)
                        add(model, proto, "throughput_rps", res["rps"])
                        p99[(c, length, conc)] = res["p99_ms"]
            for conc in conc_grid:  # flatness in L: p99(L) / p99(L=100), target within +-20%
                for length in lengths_grid:
                    if 512 not in cands_grid or length == 100 or 100 not in lengths_grid:
                        continue
                    add(model, f"{base}, C=512, concurrency={conc}, p99 at L={length} vs L=100", "p99_ratio_vs_L100",
                        p99[(512, length, conc)], p99[(512, 100, conc)])
            # HTTP + validation overhead vs in-process scoring at C=512, L=10000, concurrency 1
            inproc = in_process_ms(model, db, 3, 512)
            app0 = app_seconds(port)
            load1 = os.getloadavg()[0]
            res = asyncio.run(load(port, 3, cand_sets[512], 1, args.seconds, args.max_requests))
            app1 = app_seconds(port)
            http = res["p50_ms"]
            app_ms = (app1[0] - app0[0]) / max(app1[1] - app0[1], 1) * 1e3
            add(model, f"in-process CTRScorer (ids -> probabilities, cached state), C=512, L=10000, median, 2-core load avg {load1:.1f}",
                "inproc_ms", inproc)
            add(model, f"{base}, C=512, L=10000, concurrency=1: (HTTP p50 - in-process) / in-process", "http_overhead_ratio",
                (http - inproc) / inproc, 0.30)
            add(model, "server-side mean /v1/score time (ASGI app: validation, routing, state check, batching, scoring,"
                " serialisation; excludes socket I/O, HTTP parsing and the client), C=512, L=10000, concurrency=1",
                "app_ms", app_ms)
            add(model, "server-side mean /v1/score time vs in-process scoring, C=512, L=10000, concurrency=1:"
                " (app - in-process) / in-process", "app_overhead_ratio", (app_ms - inproc) / inproc, 0.30)
            batched = asyncio.run(load(port, 2, cand_sets[100], 64, args.seconds, args.max_requests))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        proc = start(model, db, port, 1)
        try:
            single = asyncio.run(load(port, 2, cand_sets[100], 64, args.seconds, args.max_requests))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        add(model, f"{base}, C=100, L=2000, concurrency=64: throughput max_batch=16 vs max_batch=1", "batching_rps",
            batched["rps"], single["rps"])
        add(model, f"{base}, C=100, L=2000, concurrency=64: p99 max_batch=16 vs max_batch=1", "batching_p99_ms",
            batched["p99_ms"], single["p99_ms"])
    if not args.no_write:
        print(write_rows(args.out, rows))


if __name__ == "__main__":
    main()
