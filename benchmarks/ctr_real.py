"""Long-sequence CTR on real data: Taobao UserBehavior sample (DARE protocol: per-user positive
targets at fixed positions, 2 popularity negatives each, history = the preceding behaviours) and
MovieLens latest-small (every rating is a sample, click = rating >= 4). AUC, GAUC, logloss on test,
mean ± std over seeds, for DIN (recent 50), TWIN, DARE, SDIM and full target attention (scaled
dot-product softmax attention over the whole kept history, DIN's embeddings and head).

Builds come from the data pipeline (`python -m pipelines.build configs/data/<name>.yaml --engine polars`,
run here when the build directory is missing). Same budget for every model (Adam, epochs, batch,
the best-validation-AUC epoch); on this 2-core machine the train split may be subsampled
(`--max-train`, a fixed random subset, the same for every model and seed) — stated in each row.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ctr_real
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.ctr_planted import MODELS as PLANTED_MODELS
from benchmarks.ctr_planted import train_and_eval
from benchmarks.results import row, write_rows
from recsys.experiment import _num_categories
from recsys.tasks.ctr import CTRTask

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"taobao-sample": "runs/taobao-sample/build", "movielens-small": "runs/movielens-small/build"}
# the same model settings as the planted benchmark (its MLP-over-all-L DIN is left out here)
MODELS = {k: v for k, v in PLANTED_MODELS.items() if k != "din_mlp_full"}


def ensure_build(name: str) -> Path:
    build = ROOT / DATASETS[name]
    if not (build / "ctr_samples.parquet").is_file():
        subprocess.run([sys.executable, "-m", "pipelines.build", str(ROOT / f"configs/data/{name}.yaml"),
                        "--engine", "polars", "--output", str(build)], check=True, cwd=ROOT)
    return build


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--max-history", type=int, default=200)
    p.add_argument("--max-train", type=int, default=0, help="subsample the train split to this many rows (0: all)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(1)
    command = (f"OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ctr_real --datasets {args.datasets} "
               f"--models {args.models} --seeds {args.seeds} --epochs {args.epochs} --batch-size {args.batch_size} "
               f"--lr {args.lr} --max-history {args.max_history} --max-train {args.max_train}")
    rows, summary = [], {}
    for ds in args.datasets.split(","):
        build = ensure_build(ds)
        task = CTRTask(build, max_history=args.max_history, eval_batch_size=512, bucket_batches=8)
        n_train = len(task.train)
        if 0 < args.max_train < n_train:
            sel = np.sort(np.random.default_rng(0).choice(n_train, args.max_train, replace=False))
            task.train = task.train.take(sel)
        cats = _num_categories(build)
        proto = (f"{'DARE protocol, 2 popularity negatives/positive' if ds == 'taobao-sample' else 'click = rating >= 4'}; "
                 f"test split; histories <= {args.max_history}; train {len(task.train)}/{n_train} samples; "
                 f"Adam lr {args.lr}, {args.epochs} epochs, batch {args.batch_size}, best-valid-AUC epoch; "
                 f"mean ± std over seeds {args.seeds}")
        for name in args.models.split(","):
            per_seed = []
            for seed in (int(s) for s in args.seeds.split(",")):
                _, res = train_and_eval(task, MODELS[name], cats, args, seed)
                logging.info("%s %s seed %d: %s", ds, name, seed, json.dumps(res))
                per_seed.append(res)
            curves = "; ".join(f"seed {sd}: {r['valid_curve']}" for sd, r in zip(args.seeds.split(","), per_seed))
            for metric in ("auc", "gauc", "logloss"):
                vals = np.array([r[metric] for r in per_seed])
                summary[f"{ds}/{name}/{metric}"] = f"{vals.mean():.4f} ± {vals.std(ddof=1) if len(vals) > 1 else 0:.4f}"
                rows.append(row(name="ctr_real", model=name, dataset=ds, metric=f"test/{metric}/mean",
                                value=float(vals.mean()), reference=float(vals.std(ddof=1)) if len(vals) > 1 else None,
                                protocol=proto + f" (reference = std; values {[round(float(v), 4) for v in vals]}; "
                                         f"valid AUC per epoch {curves})", seed=args.seeds, command=command))
            write_rows("ctr_real", rows)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
