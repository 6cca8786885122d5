"""Training/serving skew in CTR history length (issue 16): a DARE model trained on histories capped
at `ctr.max_history` = 2,000 (the CTR default) is evaluated on the same test impressions with
histories capped at 2,000 (what it was trained on) and at 10,000 (the serving default before
serving read the cap from the model). Beyond 2,000, target-relative positions are clamped to the
model's max_position (2,000), so every older behaviour shares one position embedding.

Data: configs/synth/planted_skew.yaml (planted long histories, median 3,000, up to 10,000; see
docs/SYNTH.md). Training: `recsys.experiment.run_experiment` (the product's `fit`), best weights by
validation AUC at the training cap. Rows: test AUC / GAUC / logloss at each serving cap, and the AUC
change 10k - 2k (reference = AUC at 2k) with a 95% paired bootstrap interval over users (the same
resampled users score both caps; recsys/eval/bootstrap.py). A finished run with the same config is
reused (its run directory is named by the training settings).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ctr_skew
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ROOT, ensure_synth, relative
from benchmarks.results import row, write_rows
from recsys.config import load_yaml
from recsys.eval.bootstrap import ctr_bootstrap, percentile_ci
from recsys.eval.ctr import ctr_metrics
from recsys.experiment import ExperimentConfig, load_run, parse_experiment, run_experiment
from recsys.tasks.ctr import CTRTask

N_BOOT = 1000


def finished(cfg: ExperimentConfig) -> bool:
    """A run directory of exactly this config with its final evaluation written."""
    path = cfg.run_dir / "config.yaml"
    return (cfg.run_dir / "eval.json").is_file() and path.is_file() and load_yaml(path, ExperimentConfig) == cfg


def auc_change_ci(users: np.ndarray, labels: np.ndarray, lo: np.ndarray, hi: np.ndarray, seed: int = 0
                  ) -> tuple[float, float]:
    """95% paired bootstrap interval of AUC(hi) - AUC(lo): the same user resamples score both."""
    a = ctr_bootstrap(users, labels, lo, N_BOOT, seed)["auc"]
    b = ctr_bootstrap(users, labels, hi, N_BOOT, seed)["auc"]
    return percentile_ci(b - a)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synth", type=Path, default=ROOT / "configs/synth/planted_skew.yaml")
    p.add_argument("--build", type=Path, default=ROOT / "runs/planted_skew/build")
    p.add_argument("--runs", type=Path, default=ROOT / "runs/planted_skew")
    p.add_argument("--train-cap", type=int, default=2000)
    p.add_argument("--serve-caps", default="2000,10000")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="ctr_skew")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    build = ensure_synth(args.synth, args.build)
    cfg = parse_experiment({
        "name": f"dare_cap{args.train_cap}_ep{args.epochs}_lr{args.lr}_seed{args.seed}", "task": "ctr", "data": {"build_dir": str(build)},
        "model": {"name": "dare", "top_k": 20, "use_aux_loss": True, "max_position": args.train_cap},
        "ctr": {"max_history": args.train_cap},
        "train": {"epochs": args.epochs, "batch_size": 256, "lr": args.lr, "betas": [0.9, 0.999],
                  "bucket_by_length": True},
        "output_dir": str(args.runs), "seed": args.seed,
    }, source="ctr_skew")
    run_dir = cfg.run_dir if finished(cfg) else run_experiment(cfg)
    model = load_run(run_dir).model
    manifest = json.loads((build / "manifest.json").read_text())
    ls = manifest["length_stats"]
    data = (f"planted synth ({relative(args.synth)}: 2000 users, 4000 items, lengths median {ls['median']:.0f} max {ls['max']}, "
            f"data seed 0)")
    command = (f"OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ctr_skew --train-cap {args.train_cap} "
               f"--serve-caps {args.serve_caps} --epochs {args.epochs} --lr {args.lr} --seed {args.seed} --out {args.out}")
    trained = (f"DARE (top-20, aux loss, max_position {args.train_cap}) trained by fit on histories <= {args.train_cap}: "
               f"Adam lr {args.lr}, {args.epochs} epochs, batch 256, length-bucketed, best-valid-AUC epoch, seed {args.seed}")
    rows, auc, logits = [], {}, {}
    for cap in (int(x) for x in args.serve_caps.split(",")):
        task = CTRTask(build, max_history=cap, eval_batch_size=128)
        test = task.splits["test"]
        longer = float(np.mean(test.prefix > args.train_cap))
        logits[cap] = task.predict(model, "test")
        metrics = ctr_metrics(test.user_ids, test.labels, logits[cap])
        auc[cap] = metrics["auc"]
        for metric in ("auc", "gauc", "logloss"):
            rows.append(row(name="ctr_skew", model="dare", dataset=data, metric=f"test/{metric}@serve{cap}",
                            value=metrics[metric], seed=args.seed, command=command,
                            protocol=f"planted CTR test split ({len(test)} impressions, {longer:.0%} with history "
                                     f"> {args.train_cap}), histories capped at {cap} at evaluation; {trained}"))
        logging.info("serve cap %d: %s", cap, json.dumps(metrics))
    caps = sorted(auc)
    if len(caps) == 2:
        lo, hi = caps
        ci = auc_change_ci(test.user_ids, test.labels, logits[lo], logits[hi], args.seed)
        rows.append(row(name="ctr_skew", model="dare", dataset=data, metric=f"test/auc_change_serve{hi}_vs_{lo}",
                        value=auc[hi] - auc[lo], reference=auc[lo], ratio=auc[hi] / auc[lo], seed=args.seed,
                        command=command, protocol=f"AUC(histories <= {hi}) - AUC(histories <= {lo}) on the same test "
                                                  f"impressions and weights, 95% paired bootstrap CI over users "
                                                  f"[{ci[0]:.4f}, {ci[1]:.4f}] ({N_BOOT} resamples); reference = AUC "
                                                  f"at {lo}; {trained}"))
    write_rows(args.out, rows)
    print(json.dumps(auc))


if __name__ == "__main__":
    main()
