"""SASRec on the paper's Games set with the paper's settings (configs/experiments/sasrec_games.yaml:
maxlen 50, d 50, 2 blocks, 1 head, dropout 0.5, lr 1e-3, batch 128, BCE with 1 negative), within a
training budget. Reports test sampled-100 NDCG@10 / HR@10 against the paper's 0.536 / 0.741,
full-ranking figures, seconds per epoch and time-to-bar (training seconds until VALIDATION sampled-100
reaches both bars, checked at every evaluation; the test split is only scored once, with the
selected weights). With --seeds the rows give the mean over seeds (per-seed values and std in the
protocol); --reuse-runs takes a seed's finished, identical run from --output-dir instead of training.

The issue's bar, 3 seeds, 10-minute budget (validation included) on the process clock:

    .venv/bin/python -m benchmarks.sasrec_games --max-minutes 10 --epochs 201 --eval-every 40 \
        --budget-clock process --reduction epoch_mean --select-metric sampled100/ndcg@10 --valid-users all \
        --ema-decay 0.999 --seeds 0,1,2                       # weight average: not in the paper
    .venv/bin/python -m benchmarks.sasrec_games --max-minutes 10 --epochs 201 --eval-every 20 \
        --budget-clock process --reduction epoch_mean --select-metric sampled100/ndcg@10 --valid-users all \
        --seeds 0,1,2                                         # the paper's training, last weights ~ selected

Variants: --batching random (plain shuffled batches), --negatives K (BCE with K negatives),
--loss sampled_softmax --negatives M --shared-negatives uniform, --norm pre_ln, --reduction
batch_mean (the default: each batch's mean; with length bucketing it up-weights short users).
Results: benchmarks/results/sasrec_games[_<batching>_neg<K>|_<loss>...][_<reduction>][_<clock>clock][_<norm>]
[_select-...][_validall][_ema<d>][_seeds...|_s<seed>].json (the name lists every non-default option).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ROOT as REPO
from benchmarks.train_speed import ensure_games_build

BAR_NDCG, BAR_HR = 0.536, 0.741


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-minutes", type=float, default=10.0, help="training time budget")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default=None,
                    help="comma-separated seeds run one after another; rows give the mean (per-seed values and "
                         "std in the protocol); overrides --seed")
    ap.add_argument("--norm", choices=["query_only", "pre_ln"], default="query_only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batching", choices=["bucketed", "random"], default="bucketed",
                    help="bucketed: users of similar length share a batch (train.bucket_by_length); random: plain shuffle")
    ap.add_argument("--negatives", type=int, default=1,
                    help="BCE: negatives per position (paper: 1); sampled_softmax: shared negatives per batch")
    ap.add_argument("--loss", choices=["bce", "sampled_softmax", "ce"], default="bce",
                    help="bce = the paper's; sampled_softmax = shared negatives per batch (see --shared-negatives)")
    ap.add_argument("--shared-negatives", choices=["popularity", "uniform"], default="popularity",
                    help="sampled_softmax: popularity (log-Q corrected) or uniform shared negatives")
    ap.add_argument("--reduction", choices=["batch_mean", "epoch_mean"], default="batch_mean",
                    help="loss over a batch: mean over its positions (papers' code) or sum over a constant "
                         "(every position weighs the same across the epoch; recsys/losses.py)")
    ap.add_argument("--ema-decay", type=float, default=None,
                    help="train.ema_decay: score the exponential moving average of the weights (not in the paper)")
    ap.add_argument("--select-metric", default="full/ndcg@10",
                    help="validation metric that selects the weights scored on test (eval.select_metric)")
    ap.add_argument("--valid-users", default="10000",
                    help="validation users: a fixed random sample of this many, or 'all' (31,013)")
    ap.add_argument("--budget-clock", choices=["wall", "process"], default="wall",
                    help="process = the run's CPU time (a shared machine does not shrink the budget)")
    ap.add_argument("--reuse-runs", action="store_true",
                    help="reuse a seed's finished run in --output-dir when its stored config is this one and it "
                         "trained every epoch (see finished_run); otherwise train")
    ap.add_argument("--output-dir", default=str(REPO / "runs" / "bench"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from recsys.config import read_yaml
    from recsys.experiment import parse_experiment, run_experiment

    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    ensure_games_build()
    data = read_yaml(REPO / "configs/experiments/sasrec_games.yaml")
    data["data"]["build_dir"] = str(REPO / "runs/games/build")
    data["model"]["norm"] = args.norm
    data["eval"].update(select_metric=None if args.select_metric == "full/ndcg@10" else args.select_metric,
                        valid_max_users=None if args.valid_users == "all" else int(args.valid_users))
    data["train"].update(max_minutes=args.max_minutes, epochs=args.epochs, eval_every=args.eval_every, patience=None,
                         bucket_by_length=args.batching == "bucketed", budget_clock=args.budget_clock,
                         ema_decay=args.ema_decay)
    data["loss"] = {"kind": args.loss, "reduction": args.reduction,
                    **({} if args.loss == "ce" else {"num_negatives": args.negatives})}
    if args.loss == "sampled_softmax":
        data["loss"]["shared_negatives"] = args.shared_negatives
    if args.loss == "bce":  # the paper's loss keeps the names of the earlier result files
        variant = "" if (args.batching, args.negatives) == ("bucketed", 1) else f"_{args.batching}_neg{args.negatives}"
    else:
        variant = f"_{args.loss}" + (f"{args.negatives}_{args.shared_negatives}" if args.loss == "sampled_softmax" else "")
        variant += "" if args.batching == "bucketed" else f"_{args.batching}"
    if args.reduction != "batch_mean":
        variant += f"_{args.reduction}"
    if args.budget_clock != "wall":
        variant += f"_{args.budget_clock}clock"
    if args.norm != "query_only":
        variant += f"_{args.norm}"
    if args.select_metric != "full/ndcg@10":
        variant += "_select-" + args.select_metric.replace("/", "-").replace("@", "")
    if args.valid_users != "10000":
        variant += f"_valid{args.valid_users}"
    if args.ema_decay is not None:
        variant += f"_ema{args.ema_decay:g}"
    run_prefix = "sasrec-games" + variant.replace("_", "-")  # + "-s<seed>": one run directory per seed
    if args.seeds:
        variant += "_seeds" + "-".join(map(str, seeds))
    elif args.seed != 0:
        variant += f"_s{args.seed}"

    if args.reuse_runs and args.threads != 1:
        raise SystemExit("--reuse-runs needs --threads 1 (multi-threaded CPU training is not bitwise reproducible)")
    runs: list[dict] = []
    reused: dict[int, str] = {}  # seed -> code version of the reused run (from its manifest)
    for seed in seeds:
        data.update(output_dir=args.output_dir, seed=seed, name=f"{run_prefix}-s{seed}")
        cfg = parse_experiment(dict(data), "sasrec_games")
        run_dir = finished_run(cfg) if args.reuse_runs else None
        if run_dir is not None:
            print(f"seed {seed}: reusing the finished run {run_dir} (same config, all epochs completed)", flush=True)
            reused[seed] = json.loads((run_dir / "manifest.json").read_text()).get("code_version", "unknown")
        else:
            run_dir = run_experiment(cfg, resume=False)
        runs.append(summarise_run(run_dir))
        print(f"seed {seed}: test sampled-100 NDCG@10 {runs[-1]['test/sampled100/ndcg@10']:.4f} "
              f"HR@10 {runs[-1]['test/sampled100/hr@10']:.4f}", flush=True)

    loss_text = {"bce": f"BCE with {args.negatives} negative(s) per position"
                        + (" (paper)" if args.negatives == 1 else " (paper: 1)"),
                 "sampled_softmax": f"sampled softmax over {args.negatives} shared {args.shared_negatives}-sampled "
                                    f"negatives per batch"
                                    f"{' with log-Q correction' if args.shared_negatives == 'popularity' else ''} "
                                    f"(not the paper's BCE)",
                 "ce": "full-softmax cross-entropy (not the paper's BCE)"}[args.loss]
    reduction_text = ("mean over the batch's positions (paper)" if args.reduction == "batch_mean" else
                      "summed over the batch's positions / mean positions per batch (epoch_mean)")
    fits = [x["fit"] for x in runs]
    one = lambda key: fits[0][key] if len(fits) == 1 else [f[key] for f in fits]  # noqa: E731
    budget = (f"training budget {args.max_minutes} min on the {args.budget_clock} clock ({one('epochs_run')} full "
              f"epochs run, stop: {one('stop_reason')}, best valid epoch {one('best_epoch')}); paper trains 201 epochs")
    valid_users = "all 31,013 users" if args.valid_users == "all" else f"a fixed {int(args.valid_users):,}-user sample"
    base = (f"leave-one-out, test, best weights by valid {args.select_metric} (eval every {args.eval_every} epochs, "
            f"valid on {valid_users}); SASRec paper settings, norm {args.norm}; loss {loss_text}, {reduction_text}; batches "
            f"{'length-bucketed (seeded shuffle, stable sort by length, shuffled batch order)' if args.batching == 'bucketed' else 'random users'}; "
            f"{budget}; {'' if not reused else f'reused finished runs (seed: code version) {reused}; '}"
            f"{'' if args.ema_decay is None else f'weights: exponential moving average, decay {args.ema_decay:g} per step (not in the paper); '}"
            f"torch threads {args.threads}")
    cmd = ".venv/bin/python -m benchmarks.sasrec_games " + " ".join(argv if argv is not None else sys.argv[1:])
    from benchmarks.results import row, write_rows

    def r(metric: str, key: str, protocol: str, reference=None):
        values = [x[key] for x in runs]
        if len(values) == 1:
            value = values[0]
        elif any(v is None for v in values):
            value, protocol = None, f"per seed {values} (None in a seed: no mean), {protocol}"
        else:
            value = float(np.mean(values))
            per_seed = ", ".join(f"{v:.4f}" for v in values)
            protocol = (f"mean +- {float(np.std(values)):.4f} (population std) over seeds {seeds} "
                        f"(per seed {per_seed}), {protocol}")
        ratio = None if reference is None or value is None else value / reference
        return row(name="sasrec_games", model="sasrec", dataset="amazon-games (SASRec paper Video.txt)",
                   protocol=protocol, metric=metric, value=value, reference=reference, ratio=ratio,
                   seed=seeds[0] if len(seeds) == 1 else ",".join(map(str, seeds)), command=cmd.strip())

    s100 = "sampled-100 (true item + 100 persisted negatives), " + base
    full = "full ranking over all items, history excluded, " + base
    rows = [
        r("ndcg@10", "test/sampled100/ndcg@10", s100, BAR_NDCG),
        r("hr@10", "test/sampled100/hr@10", s100, BAR_HR),
        r("ndcg@10", "test/full/ndcg@10", full),
        r("hr@10", "test/full/hr@10", full),
        r("seconds_per_epoch", "sec_per_epoch", "training only, " + base),
        r("time_to_bar_s", "time_to_bar", "training seconds until valid sampled-100 NDCG@10>=0.536 and HR@10>=0.741 "
          "(None = not reached), " + base, 600.0),
    ]
    for x in rows:
        print(f"{x['metric']:>18s} = {x['value']}  [{x['protocol']}]")
    print(f"wrote {write_rows(f'sasrec_games{variant}', rows)}")
    return 0


def finished_run(cfg) -> Path | None:
    """cfg's run directory when it holds a finished run (manifest intact) of exactly this config that
    trained every epoch (stop "completed": a budget-stopped run depends on the machine's speed), else
    None. Training is seeded and single-threaded, so on the same code such a run is what a fresh one
    would give; the code version it was trained at (its manifest) goes into the rows' protocol."""
    from recsys import artifacts
    from recsys.config import read_yaml
    from recsys.experiment import parse_experiment

    run_dir = cfg.run_dir
    if not (run_dir / "manifest.json").is_file():
        return None
    try:  # the manifest is written last and hashes config.yaml + eval.json: a rerun killed midway fails here
        artifacts.verify_manifest(run_dir)
    except ValueError:
        return None
    stored = parse_experiment(read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    fit = json.loads((run_dir / "eval.json").read_text())["fit"]
    if stored.model_dump() != cfg.model_dump() or fit["stop_reason"] != "completed":
        return None
    return run_dir


def summarise_run(run_dir: Path) -> dict:
    """Test metrics (eval.json), fit summary, mean wall seconds per full epoch and time-to-bar
    (training seconds until VALID sampled-100 reaches both bars) of one finished run."""
    ev = json.loads((run_dir / "eval.json").read_text())
    log = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    full_epochs = [r for r in log if not r["partial_epoch"]]
    elapsed, time_to_bar = 0.0, None
    for r in log:
        elapsed += r["train/seconds"]
        if r.get("valid/sampled100/ndcg@10", 0) >= BAR_NDCG and r.get("valid/sampled100/hr@10", 0) >= BAR_HR:
            time_to_bar = elapsed
            break
    return {**ev, "sec_per_epoch": sum(r["train/seconds"] for r in full_epochs) / max(len(full_epochs), 1),
            "time_to_bar": time_to_bar}


if __name__ == "__main__":
    raise SystemExit(main())
