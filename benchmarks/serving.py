"""Serving latency: a bounded load generator on loopback against a real uvicorn server (one
worker, SQLite store, per-user model state cached), for SDIM and DARE.

Clients (`--client`, named in every row's protocol): `wrk` (default; Debian's wrk 4.1, C and
epoll, so the client takes far less of the 2 shared cores than Python: `apt-get install -y wrk`)
with one thread and `concurrency` keep-alive connections, each POSTing pre-built JSON bodies
(rotating over 32 candidate sets); p50/p99 and requests/s come from wrk's own latency histogram
(a Lua `done` hook prints them exactly; the `--latency` table is the same histogram, rounded).
`httpx`: the async httpx client in Python (the older rows).

Grid: concurrency {1, 8, 64} x candidates C {100, 512} x history L {100, 2000, 10000}; p50/p99
latency and throughput per cell. Every cell runs `--repeats` times, INTERLEAVED across L (repeat
r: L=100, 2000, 10000 for each C and concurrency, then repeat r+1), `--seconds` each (httpx: or
`--max-requests`) after a warm-up; a row's value is the median over repeats and its protocol
lists every repeat's value (one short run makes p99 noise on a shared 2-core box).

Target rows put the target's quantity in `ratio` and the definition + target in `protocol`:
- `p99_ms` (SDIM, C=512, L=10000, concurrency 8): ratio = p99 / 20 ms (target <= 1);
- `p99_vs_L100` per concurrency and L: ratio = median p99 at L / median p99 at L=100 (target 0.8-1.2);
- `http_overhead` (C=512, L=10000, concurrency 1): value = HTTP p50 - in-process p50 (ms), reference
  = in-process p50, ratio = their quotient (target <= 0.30). In-process = the SAME call the handler
  makes (ids -> dense ids, then `run_score_jobs` on one job: cached-state check against the store's
  event count + scoring), on the same store and cached state, in the benchmark process, no HTTP;
- `app_overhead` (server-side split, same runs): value = mean time inside the ASGI app minus mean
  time of the scoring call (both from the server's own /metrics: request latency histogram and
  batch latency histogram), reference = that scoring time, ratio = their quotient.
Also micro-batching on vs off (max_batch 16 vs 1) at concurrency 64, and, with `--floor`, the
HTTP floor: a minimal ASGI app answering every POST with a fixed body of the /v1/score size.
Weights are freshly initialised (latency does not depend on their values); ids are synthetic.

    .venv/bin/python -m benchmarks.serving --repeats 3            # full grid -> benchmarks/results/serving.json
    .venv/bin/python -m benchmarks.serving --targets              # the three targets -> serving_targets.json
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

from benchmarks.serving_rows import Bench, fmt_list, grid_rows, overhead_rows

NUM_ITEMS, NUM_CATS = 50_000, 100
LENGTHS = (100, 2000, 10_000)
CANDS = (100, 512)
CONCURRENCY = (1, 8, 64)
MODEL_CFGS = {
    # SDIM's online setting (m=48 hashes, tau=3: 16 signatures x 8 buckets), DARE's paper dims
    "sdim": {"name": "sdim", "item_dim": 16, "cat_dim": 16, "num_hashes": 48, "tau": 3, "short_len": 16},
    "dare": {"name": "dare", "item_dim": 16, "cat_dim": 16, "pos_dim": 16, "top_k": 20},
}


def make_scorer(model: str, max_history: int = 10_000, device: str = "cpu"):
    import torch

    from recsys.data.vocab import Vocabulary
    from recsys.models.registry import build_model, parse_model_config
    from serving.models import CTRScorer, ModelInfo

    torch.manual_seed(0)
    m = build_model(parse_model_config(dict(MODEL_CFGS[model])), NUM_ITEMS, NUM_CATS).eval()
    vocabs = {"users": Vocabulary(np.arange(1, 4)), "items": Vocabulary(np.arange(1, NUM_ITEMS + 1)),
              "categories": Vocabulary(np.arange(1, NUM_CATS + 1))}
    cats = np.concatenate([[0], (np.arange(NUM_ITEMS) % NUM_CATS) + 1])
    return CTRScorer(m, vocabs, ModelInfo(model, "init-seed0", "<benchmark>"), cats, max_history, device)


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

    if args.floor:  # the HTTP floor: uvicorn + a bare ASGI app, a fixed body of the /v1/score size
        body = b"x" * args.floor

        async def floor_app(scope: dict, receive, send) -> None:
            if scope["type"] != "http":
                return
            while (await receive()).get("more_body"):
                pass
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})

        uvicorn.run(floor_app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, lifespan="off")
        return
    settings = ServingSettings(store=f"sqlite:{args.db}", token="bench", max_candidates=1024, fast_score_path=not args.no_fast_path,
                               batch=BatchSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                                                   inline_when_alone=not args.no_inline,
                                                   batched_scoring={"auto": None, "on": True, "off": False}[args.batched_scoring]))
    settings.configure_process()  # as `recsys serve` does: 1 torch thread, 0.5 ms GIL switch interval
    uvicorn.run(create_app(settings, ctr=make_scorer(args.model, device=args.device)), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)


async def load(port: int, user: int | list[int], cands: list[list[int]], concurrency: int, seconds: float,
               max_requests: int) -> dict:
    """httpx client: `concurrency` tasks POSTing in turn over the candidate sets (and over the users,
    when `user` is a list), after one warm-up request per user and three in all."""
    import httpx

    users = [user] if isinstance(user, int) else list(user)
    lat: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=600) as client:
        for k in range(max(3, len(users))):  # warm-up (also caches the users' states)
            body = {"user_id": users[k % len(users)], "candidates": cands[k % len(cands)]}
            (await client.post("/v1/score", json=body)).raise_for_status()
        deadline = time.perf_counter() + seconds
        sent = 0

        async def one(k: int) -> None:
            nonlocal errors, sent
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                t0 = time.perf_counter()
                r = await client.post("/v1/score", json={"user_id": users[sent % len(users)], "candidates": cands[sent % len(cands)]})
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


def load_wrk(port: int, user: int | list[int], cands: list[list[int]], concurrency: int, seconds: float,
             warm: bool = True) -> dict:
    """One wrk run (1 thread, `concurrency` connections, `seconds`) after 3 warm-up requests (one per
    user when `user` is a list of more; the bodies then rotate over the users too)."""
    import httpx

    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("benchmarks.serving --client wrk: wrk not found (apt-get install -y wrk), or use --client httpx")
    users = [user] if isinstance(user, int) else list(user)
    bodies = [json.dumps({"user_id": users[k % len(users)], "candidates": c}, separators=(",", ":"))
              for k, c in enumerate(cands)]
    for b in bodies[:max(3, len(users))] if warm else []:  # warm-up (also caches the user's state)
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


def run_load(client: str, port: int, user: int | list[int], cands: list[list[int]], concurrency: int, seconds: float, max_requests: int) -> dict:
    if client == "wrk":
        return load_wrk(port, user, cands, concurrency, seconds)
    return asyncio.run(load(port, user, cands, concurrency, seconds, max_requests))


def in_process_ms(model: str, db: Path, user: int, cands: list[list[int]], reps: int = 300, device: str = "cpu") -> float:
    """Median time of the SAME scoring call the /v1/score handler makes, in this process, no HTTP:
    raw ids -> dense ids (`CTRScorer.encode_items`), then `run_score_jobs` on one job (the cached
    state checked against the store's event count, then scored), on the same SQLite store with the
    user's state cached."""
    import torch

    from serving.scoring import ScoreJob, run_score_jobs
    from serving.metrics import Metrics
    from serving.state import StateCache
    from serving.store.sqlite import SQLiteStore

    torch.set_num_threads(1)  # as the server
    scorer = make_scorer(model, device=device)
    store = SQLiteStore(db)
    cache = StateCache(store, Metrics())
    try:
        cache.get(scorer, user)  # cache the state, as the warm-up does on the server
        raws = [np.asarray(c, dtype=np.int64) for c in cands]
        times = []
        for k in range(reps):
            t0 = time.perf_counter()
            dense = scorer.encode_items(raws[k % len(raws)])
            res = run_score_jobs([ScoreJob(scorer, cache, user, None, dense, None, None)])
            times.append(time.perf_counter() - t0)
            if isinstance(res[0], BaseException):
                raise res[0]
    finally:
        store.close()
    return float(np.median(times) * 1e3)


def start(model: str, db: Path, port: int, max_batch: int, fast_path: bool = True, inline: bool = True,
          floor: int = 0, device: str = "cpu", batched: str = "auto") -> subprocess.Popen:
    """A benchmark server process (`floor` > 0: the bare HTTP-floor app with a body of that size)."""
    import httpx

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.serving", "--worker", "--model", model, "--db", str(db),
                             "--port", str(port), "--max-batch", str(max_batch), "--device", device,
                             "--batched-scoring", batched] + ([] if fast_path else ["--no-fast-path"])
                            + ([] if inline else ["--no-inline"]) + ([f"--floor={floor}"] if floor else []), env=env)
    deadline = time.monotonic() + (300 if device.startswith("cuda") else 60)  # CUDA: Triton compiles at start-up
    while time.monotonic() < deadline:
        try:
            if floor:
                httpx.post(f"http://127.0.0.1:{port}/", content=b"{}", timeout=1).raise_for_status()
                return proc
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise RuntimeError(f"benchmark server exited with code {proc.returncode} before it was ready (see its stderr above)")
            time.sleep(0.1)
    proc.kill()
    raise TimeoutError("benchmark server did not become ready")


def server_seconds(port: int) -> dict[str, float]:
    """Sums and counts of the server's own histograms (/metrics): time inside the ASGI app for
    /v1/score (GuardMiddleware) and time of the scoring call per micro-batch."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out = {"app_sum": 0.0, "app_count": 0.0, "batch_sum": 0.0, "batch_count": 0.0}
    for fam in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=60).text):
        for s in fam.samples:
            kind = s.name.rsplit("_", 1)[-1]
            if kind not in ("sum", "count"):
                continue
            if fam.name == "recsys_request_latency_seconds" and s.labels.get("endpoint") == "/v1/score":
                out[f"app_{kind}"] = s.value
            elif fam.name == "recsys_batch_latency_seconds":
                out[f"batch_{kind}"] = s.value
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--floor", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--model", default="sdim")
    p.add_argument("--models", default="sdim,dare")
    p.add_argument("--db")
    p.add_argument("--device", default="cpu", help="CTR model + per-user states: cpu or cuda (Triton retrieval kernels)")
    p.add_argument("--port", type=int)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--seconds", type=float, default=3.0, help="per cell and repeat")
    p.add_argument("--repeats", type=int, default=3, help="runs per cell, interleaved across L; rows give the median")
    p.add_argument("--max-requests", type=int, default=1500, help="httpx client only")
    p.add_argument("--cands", default=",".join(map(str, CANDS)), help="grid subset, e.g. 512")
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="grid subset of 100,2000,10000")
    p.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="grid subset, e.g. 1,8")
    p.add_argument("--client", choices=("wrk", "httpx"), default="wrk", help="load generator (see the module docstring)")
    p.add_argument("--no-fast-path", action="store_true", help="serve /v1/score through the FastAPI route only")
    p.add_argument("--no-inline", action="store_true", help="lone requests also go through the batch thread")
    p.add_argument("--batched-scoring", choices=("auto", "on", "off"), default="auto", help=argparse.SUPPRESS)
    p.add_argument("--no-batching-rows", action="store_true", help="skip the max_batch 16 vs 1 comparison")
    p.add_argument("--http-floor", action="store_true", help="also measure a bare uvicorn ASGI app (HTTP + client floor)")
    p.add_argument("--targets", action="store_true",
                   help="the three targets only: SDIM, C=512, L=100/2000/10000, concurrency 1 and 8, HTTP floor -> serving_targets")
    p.add_argument("--out", default=None, help="result name (benchmarks/results/<out>.json; default serving or serving_targets)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.targets:
        args.models, args.cands, args.lengths, args.concurrency = "sdim", "512", "100,2000,10000", "1,8"
        args.no_batching_rows, args.http_floor = True, True
    args.out = args.out or ("serving_targets" if args.targets else "serving")
    run(args)


def bench_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (every row carries it)."""
    if args.targets:
        command = f".venv/bin/python -m benchmarks.serving --targets --seconds {args.seconds:g} --repeats {args.repeats}"
    else:
        command = ".venv/bin/python -m benchmarks.serving " + " ".join(
            f"--{k} {v}" for k, v in (("models", args.models), ("cands", args.cands), ("lengths", args.lengths),
                                      ("concurrency", args.concurrency), ("client", args.client), ("seconds", f"{args.seconds:g}"),
                                      ("repeats", args.repeats), ("out", args.out)))
        command += "".join(f" --{flag}" for flag in ("no-fast-path", "no-inline", "no-batching-rows", "http-floor")
                           if getattr(args, flag.replace("-", "_")))
    if args.device != "cpu":
        command += f" --device {args.device}"
    if args.targets and args.out != "serving_targets":
        command += f" --out {args.out}"
    return command


def setup(args: argparse.Namespace) -> Bench:
    """Parse the grids, check the device, fill the store, draw the candidate sets."""
    from benchmarks.results import cpu_name, device_name
    from serving.models import resolve_device

    cands_grid = tuple(int(x) for x in args.cands.split(","))
    lengths_grid = tuple(int(x) for x in args.lengths.split(","))
    conc_grid = tuple(int(x) for x in args.concurrency.split(","))
    assert set(lengths_grid) <= set(LENGTHS), f"--lengths: subset of {LENGTHS}"
    resolve_device(args.device)  # a CUDA request on a machine without one fails here, by name
    command = bench_command(args)
    tmp = Path(tempfile.mkdtemp(prefix="bench_serving_"))
    db = tmp / "state.sqlite3"
    fill_store(db)
    rng = np.random.default_rng(2)
    cand_sets = {c: [rng.integers(1, NUM_ITEMS + 1, c).tolist() for _ in range(32)] for c in sorted({*cands_grid, 100, 512})}
    client = ("wrk 4.1 client (1 thread, 1 connection per concurrent request)" if args.client == "wrk"
              else "httpx async client in a separate process")
    lone = "lone requests scored on the event loop" if not args.no_inline else "every batch in the batch thread"
    base = (f"loopback HTTP POST /v1/score, {client}, uvicorn 1 worker (uvloop+httptools),"
            f" SQLite store, cached per-user state, freshly initialised weights, /v1/score fast path {'off' if args.no_fast_path else 'on'},"
            f" {lone}, {args.repeats} repeats x {args.seconds:g} s interleaved across L, median over repeats")
    # the device that scored: the GPU's name only when the model ran on it (the client is always the CPU)
    serving_device = device_name() if args.device.startswith("cuda") else "CPU: " + cpu_name()
    user_of = {length: user for user, length in enumerate(LENGTHS, start=1)}
    return Bench(args, command, db, cand_sets, client, base, serving_device, cands_grid, lengths_grid, conc_grid,
                 user_of, dataset=f"synthetic ids ({NUM_ITEMS} items)")


def http_floor(b: Bench) -> None:
    """uvicorn + a bare ASGI app answering with a body of the C=512 response size."""
    args = b.args
    port = free_port()
    size = 512 * 20 + 120
    proc = start("sdim", b.db, port, 1, floor=size)
    try:
        floor = [load_wrk(port, 0, b.cand_sets[512], 1, args.seconds, warm=False)["p50_ms"] for _ in range(args.repeats)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    b.add("none", f"HTTP floor: {b.client}, uvicorn 1 worker (uvloop+httptools), bare ASGI app answering every POST with a fixed"
          f" {size}-byte body (no parsing, no scoring), C=512 request bodies, concurrency=1, {args.repeats} repeats x {args.seconds:g} s,"
          f" median of p50 (repeats {fmt_list(floor)})", "http_floor_p50_ms", float(np.median(floor)))


def measure_cell(b: Bench, port: int, c: int, length: int, conc: int) -> dict:
    """One load run of a grid cell, with the server's own app and scoring times over it."""
    m0 = server_seconds(port)
    load1 = os.getloadavg()[0]
    out = run_load(b.args.client, port, b.user_of[length], b.cand_sets[c], conc, b.args.seconds, b.args.max_requests)
    m1 = server_seconds(port)
    assert out["errors"] == 0, out
    out["load"] = load1
    n_app, n_batch = m1["app_count"] - m0["app_count"], m1["batch_count"] - m0["batch_count"]
    out["app_ms"] = (m1["app_sum"] - m0["app_sum"]) / max(n_app, 1) * 1e3
    out["score_ms"] = (m1["batch_sum"] - m0["batch_sum"]) / max(n_batch, 1) * 1e3
    out["batch"] = n_app / max(n_batch, 1)
    return out


def measure_grid(b: Bench, model: str, port: int) -> tuple[dict[tuple[int, int, int], list[dict]], list[float]]:
    """Every (C, L, concurrency) cell, `repeats` times interleaved across L; and the in-process
    scoring time at C=512, L=10000 once per repeat (when that cell is in the grid)."""
    args = b.args
    proc = start(model, b.db, port, args.max_batch, not args.no_fast_path, not args.no_inline, device=args.device)
    res: dict[tuple[int, int, int], list[dict]] = {}
    inproc: list[float] = []
    try:
        for r in range(args.repeats):
            for c in b.cands_grid:
                for conc in b.conc_grid:
                    for length in b.lengths_grid:
                        out = measure_cell(b, port, c, length, conc)
                        res.setdefault((c, length, conc), []).append(out)
                        print(f"  repeat {r} C={c} L={length} conc={conc}: p50 {out['p50_ms']:.2f} p99 {out['p99_ms']:.2f} ms,"
                              f" {out['rps']:.0f} rps, n={out['n']}, load {out['load']:.1f}", flush=True)
            if 512 in b.cands_grid and 10_000 in b.lengths_grid and 1 in b.conc_grid:
                inproc.append(in_process_ms(model, b.db, b.user_of[10_000], b.cand_sets[512], device=args.device))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return res, inproc


def batching_rows(b: Bench, model: str, port: int) -> None:
    """Throughput and p99 with max_batch 16 against 1 (C=100, L=2000, concurrency 64)."""
    args = b.args
    both = {}
    for max_batch in (16, 1):
        proc = start(model, b.db, port, max_batch, not args.no_fast_path, not args.no_inline, device=args.device)
        try:
            both[max_batch] = [run_load(args.client, port, 2, b.cand_sets[100], 64, args.seconds, args.max_requests)
                               for _ in range(args.repeats)]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    b16, b1 = both[16], both[1]
    proto = (f"{b.base}, C=100, L=2000, concurrency=64, max_batch=16 (repeats {{a}}) vs max_batch=1 (repeats {{b}})")
    b.add(model, proto.format(a=fmt_list([o["rps"] for o in b16]), b=fmt_list([o["rps"] for o in b1])) + ": throughput",
          "batching_rps", float(np.median([o["rps"] for o in b16])), float(np.median([o["rps"] for o in b1])))
    b.add(model, proto.format(a=fmt_list([o["p99_ms"] for o in b16]), b=fmt_list([o["p99_ms"] for o in b1])) + ": p99",
          "batching_p99_ms", float(np.median([o["p99_ms"] for o in b16])), float(np.median([o["p99_ms"] for o in b1])))


def run(args: argparse.Namespace) -> None:
    """The whole benchmark: HTTP floor (optional), then per model the grid, its derived rows and
    the batching comparison; rows written to benchmarks/results/<out>.json."""
    from benchmarks.results import write_rows

    b = setup(args)
    if args.http_floor:
        http_floor(b)
    for model in args.models.split(","):
        port = free_port()
        res, inproc = measure_grid(b, model, port)
        med = {k: {f: float(np.median([o[f] for o in v])) for f in ("p50_ms", "p99_ms", "rps", "app_ms", "score_ms")}
               for k, v in res.items()}
        grid_rows(b, model, res, med)
        if inproc:
            overhead_rows(b, model, res[(512, 10_000, 1)], med[(512, 10_000, 1)], inproc)
        if not args.no_batching_rows:
            batching_rows(b, model, port)
    if not args.no_write:
        print(write_rows(args.out, b.rows))

if __name__ == "__main__":
    main()
