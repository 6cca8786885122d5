"""Batched scoring on against off over HTTP (issue 15: "DARE at C=512, L=8192, concurrency 8 on the
GPU: p99 <= 10 ms and throughput >= 5x the one-at-a-time path").

Two benchmark servers of benchmarks/serving.py (uvicorn, one worker, SQLite store, cached per-user
states, freshly initialised DARE at its paper dims), the same in all but `batch.batched_scoring`:
- on: the request grouper's group of concurrent requests is scored in ONE model call over the
  users' histories (`CTRScorer.score_many`);
- off: the same groups, one model call per request (the one-at-a-time path).
`--users` distinct users, each with an `--length`-event history, share the load: request k goes to
user k mod users with candidate set k mod 32 (C random ids each). Each server first takes a
discarded `--warmup-seconds` load at the measured concurrency (Triton variants of batched shapes
compile there, not in the measured runs), then `--repeats` runs of `--seconds`; a row's value is
the median over repeats. The client is httpx by default (the GPU machine has no wrk).

    TRITON_INTERPRET=0 PYTHONPATH=. python3 -m benchmarks.serving_batched --device cuda   # the issue's row
    .venv/bin/python -m benchmarks.serving_batched --device cpu --length 500 --cands 100 --users 4 \\
        --seconds 1 --repeats 1 --out /tmp/sb.json                                         # smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.results import command_line, cpu_name, device_name, row, write_rows_to
from benchmarks.serving import NUM_ITEMS, free_port, run_load, server_seconds, start
from benchmarks.serving_rows import fmt_list

FIRST_USER = 101  # the benchmark's users are FIRST_USER .. FIRST_USER + users - 1


def fill_users(db: Path, users: int, length: int, seed: int) -> list[int]:
    """`users` users with `length` random items each in a new SQLite store at `db`."""
    from serving.store.sqlite import SQLiteStore

    rng = np.random.default_rng(seed)
    store = SQLiteStore(db, max_history=max(length, 10_000))
    ids = list(range(FIRST_USER, FIRST_USER + users))
    try:
        for user in ids:
            store.bulk_load(user, rng.integers(1, NUM_ITEMS + 1, length), np.full(length, -1), np.arange(length))
    finally:
        store.close()
    return ids


def measure_mode(args: argparse.Namespace, db: Path, users: list[int], cands: list[list[int]], batched: str) -> list[dict]:
    """One server with batched scoring `batched` ("on"/"off"): a warm-up load, then `repeats` loads,
    each with its mean requests per scoring call (from the server's histograms)."""
    port = free_port()
    proc = start(args.model, db, port, args.max_batch, device=args.device, batched=batched)
    outs = []
    try:
        run_load(args.client, port, users, cands, args.concurrency, args.warmup_seconds, 10**9)
        for r in range(args.repeats):
            m0 = server_seconds(port)
            out = run_load(args.client, port, users, cands, args.concurrency, args.seconds, 10**9)
            m1 = server_seconds(port)
            if out["errors"]:
                raise RuntimeError(f"batched={batched}: {out['errors']} failed requests")
            out["per_call"] = (m1["app_count"] - m0["app_count"]) / max(m1["batch_count"] - m0["batch_count"], 1)
            outs.append(out)
            print(f"  batched {batched} repeat {r}: p50 {out['p50_ms']:.2f} p99 {out['p99_ms']:.2f} ms,"
                  f" {out['rps']:.0f} rps, n={out['n']}, {out['per_call']:.1f} requests per group", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return outs


def rows_of(args: argparse.Namespace, on: list[dict], off: list[dict], command: str) -> list[dict]:
    """p99 with batching on (ratio = p99 / 10 ms), throughput on vs off (ratio; target >= 5), p99 off."""
    med = lambda outs, key: float(statistics.median(o[key] for o in outs))  # noqa: E731
    vals = lambda outs, key: fmt_list([o[key] for o in outs])  # noqa: E731
    client = "httpx async client (one process)" if args.client == "httpx" else "wrk 4.1 (1 thread)"
    base = (f"loopback HTTP POST /v1/score, {client}, uvicorn 1 worker, SQLite store, cached per-user states, freshly"
            f" initialised {args.model} (paper dims), C={args.cands}, {args.users} users each L={args.length},"
            f" concurrency={args.concurrency}, request grouper max_batch {args.max_batch}; batched_scoring on = one model"
            f" call per group, off = one call per request (same groups); {args.repeats} x {args.seconds:g} s after a"
            f" {args.warmup_seconds:g} s warm-up load, median over repeats; on: p50 {vals(on, 'p50_ms')}, p99"
            f" {vals(on, 'p99_ms')}, rps {vals(on, 'rps')}, requests per group {vals(on, 'per_call')}; off: p50"
            f" {vals(off, 'p50_ms')}, p99 {vals(off, 'p99_ms')}, rps {vals(off, 'rps')}")
    device = device_name() if args.device.startswith("cuda") else "CPU: " + cpu_name()
    common = dict(name="serving_batched", model=args.model, dataset=f"synthetic ids ({NUM_ITEMS} items)", seed=0,
                  command=command, device=device)
    p99_on, rps_on, rps_off = med(on, "p99_ms"), med(on, "rps"), med(off, "rps")
    return [
        row(protocol=base + "; target: p99 <= 10 ms with batching on, ratio = p99 / 10 ms (<= 1 met)",
            metric="p99_ms batched on", value=round(p99_on, 4), reference=10.0, ratio=round(p99_on / 10.0, 4), **common),
        row(protocol=base + "; target: throughput on / off >= 5", metric="throughput_rps batched on (reference: off)",
            value=round(rps_on, 2), reference=round(rps_off, 2), ratio=round(rps_on / rps_off, 4), **common),
        row(protocol=base, metric="p99_ms batched off", value=round(med(off, "p99_ms"), 4), **common),
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="dare", choices=("dare", "sdim"))
    p.add_argument("--cands", type=int, default=512)
    p.add_argument("--length", type=int, default=8192)
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--client", choices=("httpx", "wrk"), default="httpx")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup-seconds", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="rows to this .json path (default: results/serving_batched.json)")
    args = p.parse_args(argv)
    from serving.models import resolve_device

    resolve_device(args.device)  # a CUDA request on a machine without one fails here, by name
    tmp = Path(tempfile.mkdtemp(prefix="bench_serving_batched_"))
    users = fill_users(tmp / "state.sqlite3", args.users, args.length, seed=0)
    rng = np.random.default_rng(2)
    cands = [rng.integers(1, NUM_ITEMS + 1, args.cands).tolist() for _ in range(32)]
    on = measure_mode(args, tmp / "state.sqlite3", users, cands, "on")
    off = measure_mode(args, tmp / "state.sqlite3", users, cands, "off")
    rows = rows_of(args, on, off, command_line("benchmarks.serving_batched", argv))
    for r in rows:
        print(f"{r['metric']:45s} {r['value']:10.3f}  ref {r['reference']}  ratio {r['ratio']}", flush=True)
    print(f"wrote {write_rows_to(rows, args.out, 'serving_batched')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
