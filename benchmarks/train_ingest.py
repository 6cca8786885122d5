"""Training ingest: per-worker peak memory of a Ray Train worker's data at N = 1, 2, 4 workers.

What is measured: N processes joined by a gloo process group (what Ray Train starts, without
Ray's own processes), each doing exactly what `pipelines/train_job.py` does before its first
epoch: `build_task(cfg, rank, N)` (the worker reads its parts of the partitioned build,
`layout.worker_parts`, and all-reduces the global statistics), the model, and ONE training step.
Per worker: peak RSS (VmHWM) after the step, and the data part: the peak while building the task
(reading its parts) minus the RSS after imports (torch, torchrec) and process group set-up. Value = the largest worker; reference = the build's
per-user tables on disk (sequences/, ctr_samples/, eval_negatives/: compressed parquet), so
ratio = worker memory / build size. Before the partitioned ingest every worker read the whole
build and kept a strided shard, i.e. the N = 1 figure at every N.

Build: the planted generator (`recsys data synth`, one part per 2,000 users), 40,000 users ~ 20.5M
events, 20 parts. Tasks: CTR (DIN, the build's CTR samples) and next-item (SASRec, leave-one-out
on the same sequences).

Run: `nice -n 10 .venv/bin/python -m benchmarks.train_ingest` (generates the build under
runs/train_ingest/ when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "ctr": {"name": "din", "item_dim": 8, "cat_dim": 8, "pos_dim": 8, "attention_hidden": 16, "head_hidden": [16]},
    "next_item": {"name": "sasrec", "dim": 16, "num_blocks": 1, "dropout": 0.0, "max_len": 50},
}
BATCH = 128


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _worker(rank: int, world: int, init_file: str, out_dir: str, cfg_json: str) -> None:
    """One rank: its task (its parts), the model and one training step; writes its memory."""
    import torch
    import torchrec  # noqa: F401  (the models' embedding library: its ~100 MiB are not data)

    from recsys.experiment import build_model, build_task, parse_experiment

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    cfg = parse_experiment(json.loads(cfg_json))
    idle = _status_kib("VmRSS")
    t0 = time.perf_counter()
    task = build_task(cfg, rank=rank, world_size=world)
    task_peak = _status_kib("VmHWM")
    torch.manual_seed(0)
    model = build_model(cfg, task if world == 1 else None)
    batch = next(iter(task.train_batches(1, BATCH, torch.Generator().manual_seed(rank))))
    loss, _ = task.loss(model, batch)
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    users = int(task.sequences.num_users)
    events = int(task.sequences.items.size)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "parts": task.parts, "idle_kib": idle, "task_peak_kib": task_peak, "peak_kib": peak, "users": users,
         "events": events, "seconds": seconds, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def measure(build: Path, task: str, world: int) -> list[dict[str, Any]]:
    """Start `world` ranks for `task` on `build`; their memory records, by rank."""
    import torch.multiprocessing as mp

    cfg = {"name": f"ingest-{task}-{world}", "task": task, "data": {"build_dir": str(build)},
           "model": MODELS[task], "train": {"batch_size": BATCH}, "seed": 0}
    with tempfile.TemporaryDirectory(prefix="ingest_") as tmp:
        mp.spawn(_worker, args=(world, os.path.join(tmp, "init"), tmp, json.dumps(cfg)), nprocs=world, join=True)
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]


def build_bytes(build: Path) -> int:
    from recsys.data import layout

    return sum(f.stat().st_size for t in layout.PER_USER_TABLES for f in (build / t).glob("*.parquet"))


def ensure_build(build: Path, users: int, chunk_users: int) -> None:
    if (build / "manifest.json").is_file():
        return
    from recsys.cli import main as cli

    if cli(["data", "synth", "--users", str(users), "--chunk-users", str(chunk_users), "--output", str(build)]) != 0:
        raise SystemExit(f"could not generate {build}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=40_000)
    ap.add_argument("--chunk-users", type=int, default=2_000, help="users per part of the generated build")
    ap.add_argument("--build", default="runs/train_ingest/build")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--tasks", default="ctr,next_item")
    ap.add_argument("--out", default="train_ingest", help="results file name under benchmarks/results/")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from benchmarks.results import row, write_rows
    from recsys.data import layout

    build = (ROOT / args.build).resolve() if not Path(args.build).is_absolute() else Path(args.build)
    ensure_build(build, args.users, args.chunk_users)
    manifest = json.loads((build / "manifest.json").read_text())
    events, parts, size = manifest["counts"]["events"], layout.num_parts(build), build_bytes(build)
    mib = 1024.0
    command = " ".join(["nice -n 10 .venv/bin/python -m benchmarks.train_ingest", *(argv or sys.argv[1:])])
    dataset = (f"planted synth, {manifest['counts']['users']:,} users, {events / 1e6:.1f}M events, {parts} parts, "
               f"per-user tables {size / 2**20:.0f} MiB on disk")
    rows = []
    for task in args.tasks.split(","):
        first: dict[str, float] = {}
        for world in (int(w) for w in args.workers.split(",")):
            ranks = measure(build, task, world)
            peak = max(r["peak_kib"] for r in ranks) / mib
            data = max(r["task_peak_kib"] - r["idle_kib"] for r in ranks) / mib
            first = first or {"peak": peak, "data": data}
            detail = "; ".join(f"rank {r['rank']}: parts {len(r['parts'])}, {r['events'] / 1e6:.2f}M events, peak "
                               f"{r['peak_kib'] / mib:.0f} MiB, idle {r['idle_kib'] / mib:.0f} MiB, "
                               f"{r['seconds']:.1f} s" for r in ranks)
            print(f"{task} N={world}: peak {peak:.0f} MiB, data {data:.0f} MiB ({detail})", flush=True)
            protocol = (f"{world} gloo CPU worker(s), 1 thread each; per worker: build_task(rank, {world}) reads its "
                        f"parts, + model {MODELS[task]['name']} + 1 training step (batch {BATCH}); value = the "
                        f"largest worker, reference = per-user tables on disk; N=1 values: peak {first['peak']:.0f} "
                        f"MiB, data {first['data']:.0f} MiB (before the partitioned ingest every worker read the "
                        f"whole build: at least the N=1 figures at any N); {detail}")
            for metric, value in (("ingest peak RSS per worker (MiB)", peak),
                                  ("ingest data RSS per worker (MiB, peak while building the task - idle after imports)", data)):
                rows.append(row(name=f"train_ingest_{task}_w{world}", model=MODELS[task]["name"], dataset=dataset,
                                protocol=protocol, metric=metric, value=round(value, 1),
                                reference=round(size / 2**20, 1), ratio=round(value / (size / 2**20), 3),
                                seed=0, command=command))
    path = write_rows(args.out, rows)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
