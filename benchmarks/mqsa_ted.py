"""MQSA-TED vs SASRec on Amazon Beauty and Toys (configs/experiments/{mqsa_ted,sasrec}_{beauty,toys}.yaml):
the paper's MQSA-TED settings (d 64, maxlen 50, 1 block, L 3, alpha 0.5, lambda 0.1, tau 0.1, dropout 0.5,
l2 1e-4 for MQSA-TED, batch 256, lr 1e-3), both models with the SAME loss (default full-softmax CE as the
official code; `--loss sampled_softmax --negatives M` for a cheaper shared-negative softmax with log-Q
correction), the same batching and the same training budget per run; full ranking, leave-one-out,
test split, best weights by validation full NDCG@10. HR/NDCG@5/10/20, mean and std over seeds.
Target: MQSA-TED NDCG@10 >= 1.05 x SASRec's on both sets (row metric "ndcg@10 ratio").

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.mqsa_ted --seeds 0 1 2 --max-minutes 5

Converged protocol (the paper's: train both until validation stops improving, same stopping rule):

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.mqsa_ted --seeds 0 1 2 --max-minutes 60 --patience 5 \
        --name mqsa_ted_converged --output-dir runs/bench_converged

Budget clock (train.budget_clock, default here "process"): the budget counts this process's CPU time,
which with 1 torch thread is the uncontended wall time, so a run's budget does not shrink when
other jobs share the cores or the process is paused; validation inside the loop is counted.
Runs go dataset by dataset, seed by seed, SASRec then MQSA-TED (load drift hits both alike), and the
results file (benchmarks/results/<--name>.json) is rewritten after EVERY finished run with the seeds
finished so far. A finished run whose run directory holds eval.json for the same config is reused
(so an interrupted benchmark continues where it stopped).
Allocator (`--malloc no-mmap`, default, both models): glibc mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD
huge) keeps freed blocks in the heap instead of returning every [positions x items] logits buffer
to the OS and page-faulting it back in next step (measured ~15 % faster steps for both models).
"""

from __future__ import annotations

import argparse
import ctypes
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
    if not (build / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "recsys.cli", "data", "build", str(REPO / f"configs/data/{name}.yaml"),
                        "--engine", "polars", "--output", str(build)], check=True, cwd=REPO)
    return str(build)


def malloc_no_mmap() -> bool:
    """glibc: serve big blocks from the heap and never trim it (see module docstring); False elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**30))


def run_one(model: str, dataset: str, seed: int, args: argparse.Namespace) -> dict:
    """Train + evaluate one (model, dataset, seed); returns eval.json plus mean seconds per full epoch."""
    from recsys.config import load_yaml, read_yaml
    from recsys.experiment import ExperimentConfig, parse_experiment, run_experiment

    data = read_yaml(REPO / f"configs/experiments/{model}_{dataset}.yaml")
    data["data"]["build_dir"] = ensure_build(dataset)
    data["train"].update(max_minutes=args.max_minutes, epochs=args.epochs, eval_every=args.eval_every,
                         bucket_by_length=args.batching == "bucketed", budget_clock=args.budget_clock,
                         patience=args.patience)
    data["loss"] = {"kind": args.loss, **({"num_negatives": args.negatives} if args.loss == "sampled_softmax" else {})}
    data.update(output_dir=args.output_dir, seed=seed, name=f"{model}-{dataset}-{args.loss}-s{seed}")
    cfg = parse_experiment(data, f"{model}_{dataset}")
    done = cfg.run_dir / "eval.json"
    if done.is_file() and (cfg.run_dir / "config.yaml").is_file() and \
            load_yaml(cfg.run_dir / "config.yaml", ExperimentConfig) == cfg:
        run_dir = cfg.run_dir  # finished earlier with this exact config
    else:
        done.unlink(missing_ok=True)
        run_dir = run_experiment(cfg, resume=False)
    ev = json.loads((run_dir / "eval.json").read_text())
    log = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    full = [r for r in log if not r["partial_epoch"]]
    ev["sec_per_epoch"] = float(np.mean([r["train/seconds"] for r in full])) if full else None
    ev["budget_clock"] = log[-1].get("train/budget_clock", "wall") if log else None
    print(f"{dataset} {model} seed {seed}: test full ndcg@10 {ev['test/full/ndcg@10']:.4f} "
          f"({ev['fit']['epochs_run']} epochs, stop {ev['fit']['stop_reason']}, best {ev['fit']['best_epoch']})",
          flush=True)
    return ev


def dataset_rows(ds: str, res: dict[str, list[dict]], seeds: dict[str, list[int]], base: str, cmd: str) -> list[dict]:
    """Rows of one dataset from the runs finished so far: per model mean (std in the protocol) over its
    finished seeds; the ratio row once both models have the same seeds."""
    from benchmarks.results import row

    rows = []
    models = [m for m in MODELS if res[m]]
    run_info = "; ".join(
        f"{m}: epochs run {[r['fit']['epochs_run'] for r in res[m]]}, best epoch {[r['fit']['best_epoch'] for r in res[m]]}, "
        f"{np.nanmean([r['sec_per_epoch'] or np.nan for r in res[m]]):.1f} s/epoch (wall)" for m in models)
    vals = {m: {k: np.array([r[f"test/full/{k}"] for r in res[m]]) for k in METRICS} for m in models}
    for metric in METRICS:
        for m in models:
            v = vals[m][metric]
            rows.append(row(name="mqsa_ted", model=m, dataset=f"amazon-{ds}",
                            protocol=f"mean +- {v.std(ddof=0):.4f} (population std over seeds {seeds[m]}), {base}; {run_info}",
                            metric=metric, value=float(v.mean()), seed=",".join(map(str, seeds[m])), command=cmd))
    if len(models) == 2 and seeds["sasrec"] == seeds["mqsa_ted"]:
        ratio = float(vals["mqsa_ted"]["ndcg@10"].mean() / vals["sasrec"]["ndcg@10"].mean())
        per_seed = ", ".join(f"seed {s}: {a:.4f} vs {b:.4f}" for s, a, b in
                             zip(seeds["sasrec"], vals["mqsa_ted"]["ndcg@10"], vals["sasrec"]["ndcg@10"]))
        rows.append(row(name="mqsa_ted", model="mqsa_ted vs sasrec", dataset=f"amazon-{ds}",
                        protocol=f"mean MQSA-TED NDCG@10 / mean SASRec NDCG@10 over seeds {seeds['sasrec']} (target >= "
                                 f"{TARGET_RATIO}: {'met' if ratio >= TARGET_RATIO else 'NOT met'}; per seed MQSA-TED vs "
                                 f"SASRec {per_seed}), {base}; {run_info}",
                        metric="ndcg@10 ratio", value=ratio, reference=TARGET_RATIO, ratio=ratio / TARGET_RATIO,
                        seed=",".join(map(str, seeds["sasrec"])), command=cmd))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["beauty", "toys"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--max-minutes", type=float, default=5.0, help="training budget per run (both models)")
    ap.add_argument("--budget-clock", choices=["process", "wall"], default="process",
                    help="clock of the budget (train.budget_clock); process = this process's CPU time")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=1)
    ap.add_argument("--patience", type=int, default=None,
                    help="early stopping: stop after this many evaluations without a better valid NDCG@10 "
                         "(same rule for both models; default none = train to the budget)")
    ap.add_argument("--loss", choices=["ce", "sampled_softmax"], default="ce", help="same for both models")
    ap.add_argument("--negatives", type=int, default=1000, help="shared negatives for sampled_softmax")
    ap.add_argument("--batching", choices=["bucketed", "random"], default="bucketed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--malloc", choices=["no-mmap", "default"], default="no-mmap", help="see module docstring")
    ap.add_argument("--name", default="mqsa_ted", help="results file benchmarks/results/<name>.json")
    ap.add_argument("--output-dir", default=str(REPO / "runs" / "bench"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    malloc = malloc_no_mmap() if args.malloc == "no-mmap" else False
    from benchmarks.results import write_rows

    cmd = (".venv/bin/python -m benchmarks.mqsa_ted " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    loss = ("full-softmax CE (official MQSA-TED loss)" if args.loss == "ce" else
            f"sampled softmax, {args.negatives} shared popularity-sampled negatives, log-Q corrected")
    clock = ("process clock = CPU time of the run's process" if args.budget_clock == "process" else "wall clock")
    base = (f"full ranking over all items, history excluded, leave-one-out, test; best weights by valid full NDCG@10 "
            f"(eval every {args.eval_every} epochs); loss {loss} for both; d 64, maxlen 50, 1 block, batch 256, "
            f"lr 1e-3, {args.batching} batches; training budget {args.max_minutes} min per run on the {clock} "
            f"(validation included), <= {args.epochs} epochs, "
            f"{f'early stop after {args.patience} evaluations without a better valid NDCG@10 (both models), ' if args.patience else ''}"
            f"torch threads {args.threads}, "
            f"glibc malloc {'no-mmap' if malloc else 'default'}")
    done_rows: list[dict] = []
    for ds in args.datasets:
        res: dict[str, list[dict]] = {m: [] for m in MODELS}
        seeds: dict[str, list[int]] = {m: [] for m in MODELS}
        for seed in args.seeds:
            for m in MODELS:
                ev = run_one(m, ds, seed, args)
                if ev["budget_clock"] != args.budget_clock:
                    raise RuntimeError(f"{m} {ds} seed {seed} ran on the {ev['budget_clock']} clock, not {args.budget_clock}")
                res[m].append(ev)
                seeds[m].append(seed)
                write_rows(args.name, done_rows + dataset_rows(ds, res, seeds, base, cmd))
        rows = dataset_rows(ds, res, seeds, base, cmd)
        done_rows += rows
        for metric in METRICS:
            print(f"{ds} {metric}: " + "  ".join(f"{m} {r_mean(res[m], metric):.4f} +- {r_std(res[m], metric):.4f}"
                                                for m in MODELS))
        print(f"{ds}: {rows[-1]['protocol'][:200]} -> {rows[-1]['value']:.3f}; wrote {write_rows(args.name, done_rows)}",
              flush=True)
    return 0


def r_mean(runs: list[dict], metric: str) -> float:
    return float(np.mean([r[f"test/full/{metric}"] for r in runs]))


def r_std(runs: list[dict], metric: str) -> float:
    return float(np.std([r[f"test/full/{metric}"] for r in runs]))


if __name__ == "__main__":
    raise SystemExit(main())
