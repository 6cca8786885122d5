"""MQSA-TED vs SASRec on Amazon Beauty and Toys (configs/experiments/{mqsa_ted,sasrec}_{beauty,toys}.yaml):
the paper's MQSA-TED settings (d 64, maxlen 50, L 3, alpha 0.5, lambda 0.1, tau 0.1), both models with
the same loss (full softmax CE), the same d/maxlen/batch and the same training budget; full ranking,
leave-one-out, test split, best weights by validation full NDCG@10. HR/NDCG@5/10/20, mean and std
over seeds. Target: MQSA-TED NDCG@10 >= 1.05 x SASRec's on both sets.

    .venv/bin/python -m benchmarks.mqsa_ted --seeds 0 1 2 --max-minutes 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import torch

from benchmarks.train_speed import REPO

METRICS = [f"{m}@{k}" for k in (5, 10, 20) for m in ("hr", "ndcg")]


def ensure_build(name: str) -> str:
    build = REPO / "runs" / name / "build"
    if not (build / "sequences.parquet").is_file():
        subprocess.run([sys.executable, "-m", "recsys.cli", "data", "build", str(REPO / f"configs/data/{name}.yaml"),
                        "--engine", "polars", "--output", str(build)], check=True, cwd=REPO)
    return str(build)


def run_one(model: str, dataset: str, seed: int, args: argparse.Namespace) -> dict:
    from recsys.config import read_yaml
    from recsys.experiment import parse_experiment, run_experiment

    data = read_yaml(REPO / f"configs/experiments/{model}_{dataset}.yaml")
    data["data"]["build_dir"] = ensure_build(dataset)
    data["train"].update(max_minutes=args.max_minutes, epochs=args.epochs)
    data.update(output_dir=args.output_dir, seed=seed, name=f"{model}-{dataset}-s{seed}")
    run_dir = run_experiment(parse_experiment(data, f"{model}_{dataset}"), resume=False)
    return json.loads((run_dir / "eval.json").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["beauty", "toys"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--max-minutes", type=float, default=20.0, help="training budget per run (both models)")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output-dir", default=str(REPO / "runs" / "bench"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from benchmarks.results import row, write_rows

    cmd = ".venv/bin/python -m benchmarks.mqsa_ted " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    for ds in args.datasets:
        res = {m: [run_one(m, ds, s, args) for s in args.seeds] for m in ("sasrec", "mqsa_ted")}
        epochs = {m: [r["fit"]["epochs_run"] for r in res[m]] for m in res}
        for metric in METRICS:
            vals = {m: np.array([r[f"test/full/{metric}"] for r in res[m]]) for m in res}
            proto = (f"full ranking over all items, history excluded, leave-one-out, test; best weights by valid full "
                     f"NDCG@10; same loss (CE), d 64, maxlen 50, batch 256, budget {args.max_minutes} min per run, "
                     f"<= {args.epochs} epochs (epochs run: sasrec {epochs['sasrec']}, mqsa_ted {epochs['mqsa_ted']}); "
                     f"mean over seeds {args.seeds}: mqsa_ted std {vals['mqsa_ted'].std(ddof=0):.4f}, "
                     f"sasrec {vals['sasrec'].mean():.4f} +- {vals['sasrec'].std(ddof=0):.4f}")
            m_mean, s_mean = float(vals["mqsa_ted"].mean()), float(vals["sasrec"].mean())
            rows.append(row(name="mqsa_ted", model="mqsa_ted vs sasrec", dataset=f"amazon-{ds}", protocol=proto,
                            metric=metric, value=m_mean, reference=s_mean, ratio=m_mean / s_mean if s_mean else None,
                            seed=",".join(map(str, args.seeds)), command=cmd.strip()))
            print(f"{ds} {metric}: mqsa_ted {m_mean:.4f} +- {vals['mqsa_ted'].std():.4f}  sasrec {s_mean:.4f} "
                  f"+- {vals['sasrec'].std():.4f}  [{proto}]")
    print(f"wrote {write_rows('mqsa_ted', rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
