"""Ray Train throughput going from 1 to 2 workers (pipelines/train_job.py) on this machine.

Protocol: SASRec (d 50, 2 blocks, max_len 50, BCE with 1 negative, dropout 0.2) on the SASRec
paper's Amazon Games data (`configs/data/games.yaml`, real data from the shared folder, built with the
polars engine if missing), global batch 128 (1 x 128 vs 2 x 64), 2 epochs; value = global training samples/s of epoch 2 (epoch 1 is warm-up) =
rank 0's samples x workers / rank 0's epoch seconds (every rank runs the same number of steps);
validation time excluded. Ratio = 2-worker / 1-worker throughput.

    .venv/bin/python -m benchmarks.train_scaling [--epochs 2] [--gpu]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, ensure_build
from benchmarks.results import device_name, row, write_rows


def throughput(run_dir: Path, workers: int) -> dict[str, float]:
    log = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = log[-1]
    return {"samples_per_s": last["train/samples"] * workers / last["train/seconds"], "seconds": last["train/seconds"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--gpu", action="store_true", help="GPU workers (NCCL)")
    ap.add_argument("--data-config", default="configs/data/games.yaml")
    ap.add_argument("--build", default="runs/games/build", help="build directory (built from --data-config if missing)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from pipelines.train_job import ensure_ray, train_with_ray
    from recsys.experiment import parse_experiment

    build = ensure_build(ROOT / args.data_config, ROOT / args.build)
    dataset = f"{Path(args.data_config).stem} (leave-one-out next-item)"
    ensure_ray(num_cpus=None if args.gpu else 2)
    out = Path(tempfile.mkdtemp(prefix="train_scaling_"))
    results = {}
    for workers in (1, 2):
        cfg = parse_experiment({
            "name": f"scaling_w{workers}", "task": "next_item", "data": {"build_dir": str(build)}, "seed": 0,
            "model": {"name": "sasrec", "dim": 50, "num_blocks": 2, "num_heads": 1, "dropout": 0.2, "max_len": 50},
            "train": {"epochs": args.epochs, "batch_size": 128 // workers, "lr": 0.001},
            "eval": {"valid_max_users": 200}, "output_dir": str(out)})
        results[workers] = throughput(train_with_ray(cfg, workers, use_gpu=args.gpu), workers)
        print(f"{workers} worker(s): {results[workers]['samples_per_s']:.0f} samples/s", flush=True)
    protocol = (f"Ray Train TorchTrainer, SASRec d50 2 blocks max_len 50, BCE 1 neg, global batch 128, "
                f"epoch {args.epochs} of {args.epochs}, {'NCCL GPU' if args.gpu else 'gloo CPU, 1 thread/worker'}; "
                "value = 2 workers, reference = 1 worker")
    command = ".venv/bin/python -m benchmarks.train_scaling " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    rows = [row(name="train_scaling", model="sasrec", dataset=dataset, protocol=protocol,
                metric="train samples/s", value=round(results[2]["samples_per_s"], 1),
                reference=round(results[1]["samples_per_s"], 1),
                ratio=round(results[2]["samples_per_s"] / results[1]["samples_per_s"], 3), device=device_name(),
                seed=0, command=command.strip())]
    print(f"ratio 2/1 workers: {rows[0]['ratio']} ({rows[0]['device']})")
    write_rows("train_scaling", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
