"""MQSA-TED vs SASRec on Amazon Beauty and Toys (configs/experiments/{mqsa_ted,sasrec}_{beauty,toys}.yaml):
the paper's MQSA-TED settings (d 64, maxlen 50, 1 block, L 3, alpha 0.5, lambda 0.1, tau 0.1, dropout 0.5,
l2 1e-4 for MQSA-TED, batch 256, lr 1e-3), both models with the SAME loss (default full-softmax CE as the
official code; `--loss sampled_softmax --negatives M` for a cheaper shared-negative softmax with log-Q
correction), the same batching and the same wall-clock training budget per run; full ranking, leave-one-out,
test split, best weights by validation full NDCG@10. HR/NDCG@5/10/20, mean and std over seeds.
Target: MQSA-TED NDCG@10 >= 1.05 x SASRec's on both sets (row metric "ndcg@10 ratio").

    .venv/bin/python -m benchmarks.mqsa_ted --seeds 0 1 2 --max-minutes 20

Results are rewritten after every finished dataset (benchmarks/results/<--name>.json, default mqsa_ted).
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
MODELS = ("sasrec", "mqsa_ted")
TARGET_RATIO = 1.05


def ensure_build(name: str) -> str:
    build = REPO / "runs" / name / "build"
    if not (build / "sequences.parquet").is_file():
        subprocess.run([sys.executable, "-m", "recsys.cli", "data", "build", str(REPO / f"configs/data/{name}.yaml"),
                        "--engine", "polars", "--output", str(build)], check=True, cwd=REPO)
    return str(build)


def run_one(model: str, dataset: str, seed: int, args: argparse.Namespace) -> dict:
    """Train + evaluate one (model, dataset, seed); returns eval.json plus mean train seconds per full epoch."""
    from recsys.config import read_yaml
    from recsys.experiment import parse_experiment, run_experiment

    data = read_yaml(REPO / f"configs/experiments/{model}_{dataset}.yaml")
    data["data"]["build_dir"] = ensure_build(dataset)
    data["train"].update(max_minutes=args.max_minutes, epochs=args.epochs, eval_every=args.eval_every,
                         bucket_by_length=args.batching == "bucketed")
    data["loss"] = {"kind": args.loss, **({"num_negatives": args.negatives} if args.loss == "sampled_softmax" else {})}
    data.update(output_dir=args.output_dir, seed=seed, name=f"{model}-{dataset}-{args.loss}-s{seed}")
    run_dir = run_experiment(parse_experiment(data, f"{model}_{dataset}"), resume=False)
    ev = json.loads((run_dir / "eval.json").read_text())
    log = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    full = [r["train/seconds"] for r in log if not r["partial_epoch"]]
    ev["sec_per_epoch"] = float(np.mean(full)) if full else None
    print(f"{dataset} {model} seed {seed}: test full ndcg@10 {ev['test/full/ndcg@10']:.4f} "
          f"({ev['fit']['epochs_run']} epochs, stop {ev['fit']['stop_reason']}, best {ev['fit']['best_epoch']})",
          flush=True)
    return ev


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["beauty", "toys"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--max-minutes", type=float, default=20.0, help="training budget per run (both models)")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=1)
    ap.add_argument("--loss", choices=["ce", "sampled_softmax"], default="ce", help="same for both models")
    ap.add_argument("--negatives", type=int, default=1000, help="shared negatives for sampled_softmax")
    ap.add_argument("--batching", choices=["bucketed", "random"], default="bucketed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="mqsa_ted", help="results file benchmarks/results/<name>.json")
    ap.add_argument("--output-dir", default=str(REPO / "runs" / "bench"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from benchmarks.results import row, write_rows

    cmd = (".venv/bin/python -m benchmarks.mqsa_ted " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    loss = ("full-softmax CE (official MQSA-TED loss)" if args.loss == "ce" else
            f"sampled softmax, {args.negatives} shared popularity-sampled negatives, log-Q corrected")
    rows = []
    for ds in args.datasets:
        res = {m: [run_one(m, ds, s, args) for s in args.seeds] for m in MODELS}
        run_info = "; ".join(
            f"{m}: epochs run {[r['fit']['epochs_run'] for r in res[m]]}, best epoch {[r['fit']['best_epoch'] for r in res[m]]}, "
            f"{np.mean([r['sec_per_epoch'] or np.nan for r in res[m]]):.1f} s/epoch" for m in MODELS)
        base = (f"full ranking over all items, history excluded, leave-one-out, test; best weights by valid full NDCG@10 "
                f"(eval every {args.eval_every} epochs); loss {loss} for both; d 64, maxlen 50, 1 block, batch 256, "
                f"lr 1e-3, {args.batching} batches; training budget {args.max_minutes} min per run (eval included), "
                f"<= {args.epochs} epochs, torch threads {args.threads}; {run_info}")
        vals = {m: {k: np.array([r[f"test/full/{k}"] for r in res[m]]) for k in METRICS} for m in MODELS}
        for metric in METRICS:
            for m in MODELS:
                v = vals[m][metric]
                rows.append(row(name="mqsa_ted", model=m, dataset=f"amazon-{ds}",
                                protocol=f"mean +- {v.std(ddof=0):.4f} (std over seeds {args.seeds}), {base}",
                                metric=metric, value=float(v.mean()), seed=",".join(map(str, args.seeds)), command=cmd))
        ratio = float(vals["mqsa_ted"]["ndcg@10"].mean() / vals["sasrec"]["ndcg@10"].mean())
        rows.append(row(name="mqsa_ted", model="mqsa_ted vs sasrec", dataset=f"amazon-{ds}",
                        protocol=f"mean MQSA-TED NDCG@10 / mean SASRec NDCG@10 (target >= {TARGET_RATIO}: "
                                 f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}), {base}",
                        metric="ndcg@10 ratio", value=ratio, reference=TARGET_RATIO, ratio=ratio / TARGET_RATIO,
                        seed=",".join(map(str, args.seeds)), command=cmd))
        for metric in METRICS:
            print(f"{ds} {metric}: " + "  ".join(f"{m} {vals[m][metric].mean():.4f} +- {vals[m][metric].std():.4f}"
                                                for m in MODELS))
        print(f"{ds} ndcg@10 ratio mqsa_ted/sasrec {ratio:.3f} (target {TARGET_RATIO}); wrote {write_rows(args.name, rows)}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
