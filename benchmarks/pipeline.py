"""Build-pipeline benchmark: throughput and peak memory of the Ray Data build (pipelines/build.py)
against the single-process polars reference (recsys/data/transform.py), same input, same run.

Inputs: (a) generated Taobao-like events (users with long-tailed lengths up to 10k: lognormal,
clipped; Zipf item popularity; categories; behaviour types; increasing timestamps), written to
parquet and read through the `table` reader; (b) the real Taobao UserBehavior sample.

Each engine runs in a fresh subprocess; Ray start-up is excluded from the timed part (a running
cluster is the normal case). Throughput = input events / wall seconds of read + validate +
transform + write. Peak memory = max over time of the summed RSS of the subprocess tree (driver,
and for Ray its raylet/GCS/workers), sampled every 0.1 s: shared pages count once per process, so
it is an upper bound.

    .venv/bin/python -m benchmarks.pipeline --events 10000000 --users 100000   # issue size
    .venv/bin/python -m benchmarks.pipeline --events 1000000 --users 10000     # reduced
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.results import row, write_rows


def generate(path: Path, events: int, users: int, seed: int = 0) -> int:
    import polars as pl

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=0.0, sigma=1.2, size=users), 1e-9, None)
    lengths = np.clip(np.round(lengths / lengths.sum() * events), 1, 10_000).astype(np.int64)
    n = int(lengths.sum())
    items = max(1000, n // 20)
    item = (rng.zipf(1.2, size=n) % items) + 1
    user = np.repeat(np.arange(1, users + 1) * 7 + 1000, lengths)
    start = rng.integers(1_511_000_000, 1_512_000_000, size=users)
    within = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    ts = np.repeat(start, lengths) + within * rng.integers(1, 600, size=n)
    kinds = np.array(["pv", "cart", "fav", "buy"])[rng.choice(4, size=n, p=[0.9, 0.05, 0.03, 0.02])]
    perm = rng.permutation(n)  # interleave users as a log would
    pl.DataFrame({"uid": user[perm], "iid": item[perm], "cat": (item[perm] % 5000) + 1, "kind": kinds[perm],
                  "ts": ts[perm]}).write_parquet(path)
    return n


def worker(engine: str, cfg_path: str, out: str) -> None:
    from recsys.data.build_config import load_build_config

    cfg = load_build_config(cfg_path)
    if engine == "ray":
        from pipelines.build import build_ray, init_ray

        init_ray(num_cpus=2)
        print("READY", flush=True)
        t0 = time.perf_counter()
        m = build_ray(cfg, out)
    else:
        from recsys.data.transform import build_polars

        print("READY", flush=True)
        t0 = time.perf_counter()
        m = build_polars(cfg, out)
    print(json.dumps({"seconds": time.perf_counter() - t0, "kept": m["counts"]["kept"], "files": m["files"]}), flush=True)


def _tree_rss(pid: int) -> int:
    """Summed RSS (bytes) of `pid` and all its descendants, from /proc (Linux)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def measure(engine: str, cfg_path: Path, out: Path) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.pipeline", "--worker", engine, "--config", str(cfg_path),
                             "--out", str(out)], stdout=subprocess.PIPE, text=True)
    peak = [0]
    stop = threading.Event()
    ready = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss = _tree_rss(proc.pid)
            if ready.is_set():
                peak[0] = max(peak[0], rss)
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    result = None
    for line in proc.stdout:
        if line.startswith("READY"):
            ready.set()
        elif line.startswith("{"):
            result = json.loads(line)
    proc.wait()
    stop.set()
    th.join()
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"{engine} build failed (exit {proc.returncode})")
    result["peak_rss"] = peak[0]
    return result


def run_case(name: str, cfg_text: str, input_path: Path, events: int, tmp: Path, protocol: str, command: str) -> list:
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(cfg_text)
    res = {e: measure(e, cfg, tmp / f"{name}-{e}") for e in ("polars", "ray")}
    assert res["ray"]["files"] == res["polars"]["files"], "ray and polars outputs differ"
    size = input_path.stat().st_size
    rows = []
    for e in ("polars", "ray"):
        r = res[e]
        print(f"{name} {e}: {r['seconds']:.2f}s, {events / r['seconds']:.0f} events/s, peak RSS {r['peak_rss'] / 2**20:.0f} MiB "
              f"(input {size / 2**20:.1f} MiB)")
    thr = {e: events / res[e]["seconds"] for e in res}
    common = dict(name="pipeline", model=None, dataset=name, seed=0, command=command)
    rows.append(row(**common, protocol=protocol + "; throughput = events/s of read+validate+transform+write, "
                    "Ray start excluded; reference = polars single process; target ratio >= 0.5",
                    metric="throughput_events_per_s", value=thr["ray"], reference=thr["polars"],
                    ratio=thr["ray"] / thr["polars"]))
    rows.append(row(**common, protocol=protocol + "; peak summed RSS of the Ray process tree (upper bound) / input "
                    "parquet size; reference = polars process peak RSS; target ratio <= 3",
                    metric="peak_rss_bytes", value=float(res["ray"]["peak_rss"]), reference=float(res["polars"]["peak_rss"]),
                    ratio=res["ray"]["peak_rss"] / size))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--skip-generated", action="store_true")
    ap.add_argument("--worker", choices=("ray", "polars"))
    ap.add_argument("--config")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.config, args.out)
        return 0
    from recsys.settings import shared_data_dir

    command = f".venv/bin/python -m benchmarks.pipeline --events {args.events} --users {args.users}"
    ctr = "ctr:\n  mode: popularity_negatives\n  negatives_per_positive: 2\n"
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.skip_generated:
            inp = tmp / "events.parquet"
            n = generate(inp, args.events, args.users)
            cfg = (f"name: generated\nsource:\n  format: table\n  path: {inp}\n  columns: {{user_id: uid, item_id: iid, "
                   f"timestamp: ts, category_id: cat, event_type: kind}}\nseed: 0\nnum_buckets: 8\n{ctr}")
            rows += run_case("generated-taobao-like", cfg, inp, n, tmp,
                             f"generated Taobao-like, {n} events, {args.users} users, lengths lognormal clipped to 10k", command)
        src = shared_data_dir() / "taobao-userbehavior-sample" / "UserBehavior_sample.csv"
        import polars as pl

        inp = tmp / "taobao.parquet"
        pl.read_csv(src, has_header=False, new_columns=["uid", "iid", "cat", "kind", "ts"]).write_parquet(inp)
        cfg = (f"name: taobao\nsource:\n  format: taobao_csv\n  path: {src}\nseed: 0\nnum_buckets: 8\n{ctr}")
        rows += run_case("taobao-userbehavior-sample", cfg, inp, 84_475, tmp,
                         "real Taobao UserBehavior sample (84,475 events, csv reader; memory ratio vs the same rows as parquet)",
                         command)
    write_rows("pipeline", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
