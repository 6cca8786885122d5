"""Serving latency: a bounded load generator on loopback against a real uvicorn server (one
worker, SQLite store, per-user model state cached), for SDIM and DARE.

Clients (`--client`, named in every row's protocol): `wrk` (default; Debian's wrk 4.1, C and
epoll, so the client takes far less of the 2 shared cores than Python: `apt-get install -y wrk`)
with one thread and `concurrency` keep-alive connections, each POSTing pre-built JSON bodies
(rotating over 32 candidate sets); p50/p99 and requests/s come from wrk's own latency histogram
(a Lua `done` hook prints them exactly; the `--latency` table is the same histogram, rounded).
`httpx`: the async httpx client in Python (the older rows).

Grid: concurrency {1, 8, 64} x candidates C {100, 512} x history L {100, 2000, 10000}; p50/p99
latency and throughput per cell (each cell runs `--seconds` or `--max-requests`, whichever ends
first, after a warm-up). Also: in-process scoring time (the same cached state, no HTTP) for the
HTTP+validation overhead ratio, and micro-batching on vs off (max_batch 16 vs 1) at concurrency 64.
Weights are freshly initialised (latency does not depend on their values); ids are synthetic.

    .venv/bin/python -m benchmarks.serving            # full grid, writes benchmarks/results/serving.json
    .venv/bin/python -m benchmarks.serving --models sdim --out serving_wrk   # the SDIM rows only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
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

    settings = ServingSettings(store=f"sqlite:{args.db}", token="bench", max_candidates=1024, fast_score_path=not args.no_fast_path,
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


WRK_SCRIPT = """
local bodies = {BODIES}
local reqs, i = {}, 0
function init(args)
  for k, b in ipairs(bodies) do
    reqs[k] = wrk.format("POST", "/v1/score", {["Content-Type"] = "application/json"}, b)
  end
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"n": %d, "us": %d, "p50_us": %d, "p99_us": %d, "status_errors": %d, "socket_errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


def lua_string(text: str) -> str:
    return "[==[" + text + "]==]"  # Lua long bracket: no escaping needed for JSON


def load_wrk(port: int, user: int, cands: list[list[int]], concurrency: int, seconds: float) -> dict:
    """One wrk run (1 thread, `concurrency` connections, `seconds`) after 3 warm-up requests."""
    import httpx

    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("benchmarks.serving --client wrk: wrk not found (apt-get install -y wrk), or use --client httpx")
    bodies = [json.dumps({"user_id": user, "candidates": c}, separators=(",", ":")) for c in cands]
    for b in bodies[:3]:  # warm-up (also caches the user's state)
        httpx.post(f"http://127.0.0.1:{port}/v1/score", content=b, headers={"Content-Type": "application/json"},
                   timeout=600).raise_for_status()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT.replace("{BODIES}", "{" + ",".join(lua_string(b) for b in bodies) + "}"))
    try:
        out = subprocess.run([wrk, "-t", "1", "-c", str(concurrency), "-d", f"{seconds:g}s", "--timeout", "30s", "--latency",
                              "-s", f.name, f"http://127.0.0.1:{port}/v1/score"], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    res = json.loads(next(line for line in out.splitlines() if line.startswith("WRKJSON "))[len("WRKJSON "):])
    return {"p50_ms": res["p50_us"] / 1e3, "p99_ms": res["p99_us"] / 1e3, "rps": res["n"] / (res["us"] / 1e6), "n": res["n"],
            "errors": res["status_errors"] + res["socket_errors"]}


def run_load(client: str, port: int, user: int, cands: list[list[int]], concurrency: int, seconds: float, max_requests: int) -> dict:
    if client == "wrk":
        return load_wrk(port, user, cands, concurrency, seconds)
    return asyncio.run(load(port, user, cands, concurrency, seconds, max_requests))


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


def start(model: str, db: Path, port: int, max_batch: int, fast_path: bool = True) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.serving", "--worker", "--model", model, "--db", str(db),
                             "--port", str(port), "--max-batch", str(max_batch)] + ([] if fast_path else ["--no-fast-path"]), env=env)
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
    p.add_argument("--client", choices=("wrk", "httpx"), default="wrk", help="load generator (see the module docstring)")
    p.add_argument("--no-fast-path", action="store_true", help="serve /v1/score through the FastAPI route only")
    p.add_argument("--no-batching-rows", action="store_true", help="skip the max_batch 16 vs 1 comparison")
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
                                  ("concurrency", args.concurrency), ("client", args.client), ("seconds", args.seconds),
                                  ("out", args.out))) + (" --no-fast-path" if args.no_fast_path else "") + (
        " --no-batching-rows" if args.no_batching_rows else "")
    tmp = Path(tempfile.mkdtemp(prefix="bench_serving_"))
    db = tmp / "state.sqlite3"
    fill_store(db)
    rng = np.random.default_rng(2)
    cand_sets = {c: [rng.integers(1, NUM_ITEMS + 1, c).tolist() for _ in range(32)] for c in sorted({*cands_grid, 100, 512})}
    rows = []
    client = ("wrk 4.1 client (1 thread, 1 connection per concurrent request)" if args.client == "wrk"
              else "httpx async client in a separate process")
    base = (f"loopback HTTP POST /v1/score, {client}, uvicorn 1 worker (uvloop+httptools),"
            f" SQLite store, cached per-user state, freshly initialised weights, /v1/score fast path {'off' if args.no_fast_path else 'on'}")

    def add(model: str, protocol: str, metric: str, value: float, reference: float | None = None) -> None:
        ratio = None if reference in (None, 0) else value / reference
        rows.append(row(name=args.out, model=model, dataset=f"synthetic ids ({NUM_ITEMS} items)", protocol=protocol,
                        metric=metric, value=round(value, 4), reference=None if reference is None else round(reference, 4),
                        ratio=None if ratio is None else round(ratio, 4), seed=0, command=command))
        print(f"{model:5s} {protocol[len(base):] if protocol.startswith(base) else protocol:60s} {metric:10s} {value:9.3f}"
              + ("" if reference is None else f"  ref {reference:.3f}  ratio {ratio:.3f}"), flush=True)

    for model in args.models.split(","):
        port = free_port()
        proc = start(model, db, port, args.max_batch, not args.no_fast_path)
        try:
            p99 = {}
            for c in cands_grid:
                for user, length in enumerate(LENGTHS, start=1):
                    if length not in lengths_grid:
                        continue
                    for conc in conc_grid:
                        load1 = os.getloadavg()[0]
                        res = run_load(args.client, port, user, cand_sets[c], conc, args.seconds, args.max_requests)
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
            res = run_load(args.client, port, 3, cand_sets[512], 1, args.seconds, args.max_requests)
            app1 = app_seconds(port)
            http = res["p50_ms"]
            app_ms = (app1[0] - app0[0]) / max(app1[1] - app0[1], 1) * 1e3
            add(model, f"in-process CTRScorer (ids -> probabilities, cached state), C=512, L=10000, median, 2-core load avg {load1:.1f}",
                "inproc_ms", inproc)
            ov = f"{base}, C=512, L=10000, concurrency=1, n={res['n']}, 2-core load avg {load1:.1f}"
            add(model, ov, "http_p50_ms", http)
            add(model, f"{ov}: (HTTP p50 - in-process) / in-process", "http_overhead_ratio", (http - inproc) / inproc, 0.30)
            fp = "fast path off" if args.no_fast_path else "fast path on"
            add(model, f"server-side mean /v1/score time (ASGI app: validation, routing, state check, batching, scoring,"
                f" serialisation; excludes socket I/O, HTTP parsing and the client), {fp}, C=512, L=10000, concurrency=1,"
                f" {args.client} client, 2-core load avg {load1:.1f}", "app_ms", app_ms)
            add(model, f"server-side mean /v1/score time vs in-process scoring, {fp}, C=512, L=10000, concurrency=1,"
                f" {args.client} client: (app - in-process) / in-process", "app_overhead_ratio", (app_ms - inproc) / inproc, 0.30)
            if not args.no_batching_rows:
                batched = run_load(args.client, port, 2, cand_sets[100], 64, args.seconds, args.max_requests)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        if args.no_batching_rows:
            continue
        proc = start(model, db, port, 1, not args.no_fast_path)
        try:
            single = run_load(args.client, port, 2, cand_sets[100], 64, args.seconds, args.max_requests)
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
