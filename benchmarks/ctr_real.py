"""Long-sequence CTR on real data: Taobao UserBehavior sample (DARE protocol: per-user positive
targets at fixed positions, 2 popularity negatives each, history = the preceding behaviours) and
MovieLens latest-small (every rating is a sample, click = rating >= 4). AUC, GAUC, logloss on test,
mean ± std over seeds, for DIN (recent 50), TWIN, DARE, SDIM and two references for SDIM over the
whole kept history with DIN's embeddings and head: `din_mlp_full` = DIN's learnable-MLP attention
unit (the SDIM paper's "DIN (long seq)", the reference of its AUC claim) and `full_attn` = scaled
dot-product softmax target attention (second reference). SDIM's AUC gap to each reference is a row
(gap of the seed means; bar <= 0.003).

Builds come from the data pipeline (`python -m pipelines.build configs/data/<name>.yaml --engine polars`,
run here when the build directory is missing). Same budget for every model (Adam, epochs, batch,
the best-validation-AUC epoch); on this 2-core machine the train split may be subsampled
(`--max-train`, a fixed random subset, the same for every model and seed) — stated in each row.
`--keep-existing` reruns only `--models` and keeps the other models' rows of the results file (each
row carries the command that reproduces it); the gap rows are recomputed from the merged table.

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
from benchmarks.ctr_planted import SDIM_REFERENCES, train_and_eval
from benchmarks.results import RESULTS_DIR, row, write_rows
from recsys.experiment import _num_categories
from recsys.tasks.ctr import CTRTask

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"taobao-sample": "runs/taobao-sample/build", "movielens-small": "runs/movielens-small/build"}
MODELS = dict(PLANTED_MODELS)  # the same model settings as the planted benchmark
GAP = "test_auc_gap_vs_{}"


def gap_rows(rows: list[dict]) -> list[dict]:
    """SDIM's AUC gap to each reference per dataset, from the mean-AUC rows (gap of seed means)."""
    mean = {(r["dataset"], r["model"]): r for r in rows if r["metric"] == "test/auc/mean"}
    out = []
    for (ds, model), sd in sorted(mean.items()):
        if model != "sdim":
            continue
        for ref, why in SDIM_REFERENCES.items():
            if (ds, ref) in mean:
                rr = mean[(ds, ref)]
                out.append(row(name="ctr_real", model="sdim", dataset=ds, metric=GAP.format(ref),
                               value=rr["value"] - sd["value"], reference=rr["value"], seed=sd["seed"],
                               command=f"{sd['command']}  AND  {rr['command']}" if sd["command"] != rr["command"]
                               else sd["command"],
                               protocol=f"mean test AUC({ref}) - mean test AUC(SDIM) over seeds {sd['seed']} "
                                        f"(std {rr['reference']:.4f} / {sd['reference']:.4f}); reference = {why}; "
                                        f"bar: gap <= 0.003; budgets as in the two models' rows"))
    return out


def ensure_build(name: str) -> Path:
    build = ROOT / DATASETS[name]
    if not (build / "manifest.json").is_file():
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
    p.add_argument("--keep-existing", action="store_true", help="keep the results file's rows of other models")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(1)
    command = (f"OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ctr_real --datasets {args.datasets} "
               f"--models {args.models} --seeds {args.seeds} --epochs {args.epochs} --batch-size {args.batch_size} "
               f"--lr {args.lr} --max-history {args.max_history} --max-train {args.max_train}"
               + (" --keep-existing" if args.keep_existing else ""))
    rows, summary = [], {}
    rerun = {(ds, m) for ds in args.datasets.split(",") for m in args.models.split(",")}
    if args.keep_existing and (RESULTS_DIR / "ctr_real.json").is_file():
        rows = [r for r in json.loads((RESULTS_DIR / "ctr_real.json").read_text())
                if (r["dataset"], r["model"]) not in rerun and not r["metric"].startswith(GAP.format(""))]
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
    rows = [r for r in rows if not r["metric"].startswith(GAP.format(""))] + gap_rows(rows)
    write_rows("ctr_real", rows)
    for r in rows:
        if r["metric"].startswith(GAP.format("")):
            summary[f"{r['dataset']}/{r['metric']}"] = round(r["value"], 4)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
