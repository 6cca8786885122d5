"""Planted long-history CTR benchmark (issue 4 quality bars).

Data: `recsys data synth` with configs/synth/planted_bench.yaml (histories up to 2,000; see
docs/SYNTH.md); CTR split of the planted build (train prefix L-2, valid L-1, test L).
Same budget for every model: Adam (lr, epochs, batch size below), the same batches (same generator
seed), test metrics at the epoch with the best validation AUC; each seed re-initialises the models
and reshuffles the batches (the data set is fixed).
Models: DIN (recent 50), TWIN (soft search, top-20, one table), DARE (decoupled tables, top-20),
SDIM (paper setting 48 hashes / tau 3, short-term 16), full target attention = scaled dot-product
softmax attention over the whole history with DIN's embeddings and head (`attention: dot,
max_recent: null`; SDIM's paper reference). `din_mlp_full` (DIN's MLP over all behaviours) is optional.
Rows: per seed and as mean/std over seeds: test AUC/GAUC/logloss per model; top-20 retrieval NDCG of
TWIN and DARE against the planted relevant positions (test targets with at least one relevant
position); SDIM vs full attention: AUC gap, and training-step time at L = 1,024 (batch 256).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ctr_planted --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from benchmarks.results import row, write_rows
from recsys.config import load_yaml
from recsys.data.synth import PLANTED_TRUTH_FILE, RELEVANT_POSITIONS, SynthConfig, generate
from recsys.models.registry import build_model, parse_model_config
from recsys.tasks.ctr import CTRTask

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "din_recent50": {"name": "din", "max_recent": 50},
    "twin": {"name": "twin", "top_k": 20, "use_aux_loss": True},
    "dare": {"name": "dare", "top_k": 20, "use_aux_loss": True},
    "sdim": {"name": "sdim"},
    "full_attn": {"name": "din", "attention": "dot", "max_recent": None},
    "din_mlp_full": {"name": "din", "attention": "mlp", "max_recent": None},
}
DEFAULT_MODELS = "din_recent50,twin,dare,sdim,full_attn"


def train_and_eval(task: CTRTask, spec: dict, num_cats: int, args: argparse.Namespace, seed: int) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(seed)
    model = build_model(parse_model_config(spec), task.num_items, num_cats)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    best, best_state, curve = -1.0, None, []
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        for batch in task.train_batches(epoch, args.batch_size, gen):
            loss, _ = task.loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        valid = task.evaluate(model, "valid")
        curve.append(round(valid["auc"], 4))
        if valid["auc"] > best:
            best, best_state = valid["auc"], {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    test = task.evaluate(model, "test")
    test.update(valid_auc=best, valid_curve=curve, train_seconds=time.perf_counter() - t0)
    return model, test


@torch.no_grad()
def retrieval_ndcg(task: CTRTask, model: torch.nn.Module, build: Path, k: int = 20) -> tuple[float, int]:
    """Mean NDCG@k of the model's top-k search against the planted relevant positions (test targets
    with >= 1 relevant position inside the history window)."""
    truth = pq.read_table(build / PLANTED_TRUTH_FILE)[RELEVANT_POSITIONS].to_pylist()
    s = task.splits["test"]
    model.eval()
    total, n = 0.0, 0
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    for sel, batch in task.eval_batches("test"):
        paths = model.paths(batch)
        idx, sc = paths["indices"][:, 0].numpy(), paths["scores"][:, 0].numpy()  # [B,k]
        order = np.argsort(-np.where(idx >= 0, sc, -np.inf), axis=1, kind="stable")
        idx = np.take_along_axis(idx, order, axis=1)
        for b, i in enumerate(sel):
            start = max(int(s.prefix[i]) - task.max_history, 0)
            rel = np.asarray(truth[s.index[i]], dtype=np.int64) - start
            rel = rel[rel >= 0]
            if len(rel) == 0:
                continue
            hit = np.isin(idx[b], rel) & (idx[b] >= 0)
            total += float((hit * disc[: len(hit)]).sum() / disc[: min(k, len(rel))].sum())
            n += 1
    return total / max(n, 1), n


def step_time(spec: dict, num_items: int, num_cats: int, length: int, batch: int, steps: int) -> float:
    """Median seconds of one training step (forward, backward, Adam) at history length `length`."""
    torch.manual_seed(0)
    model = build_model(parse_model_config(spec), num_items, num_cats)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    items = torch.randint(1, num_items + 1, (batch, length), generator=g)
    b = {"user_ids": torch.arange(batch), "target_items": torch.randint(1, num_items + 1, (batch,), generator=g),
         "hist_items": items, "hist_cats": (items - 1) % num_cats + 1, "hist_lengths": torch.full((batch,), length),
         "labels": torch.randint(0, 2, (batch,), generator=g).float()}
    b["target_cats"] = (b["target_items"] - 1) % num_cats + 1
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        loss, _ = model.training_loss(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:  # first step is warm-up
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synth", type=Path, default=ROOT / "configs/synth/planted_bench.yaml")
    p.add_argument("--build", type=Path, default=ROOT / "runs/planted_bench/build")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seeds", default="0")
    p.add_argument("--models", default=DEFAULT_MODELS)
    p.add_argument("--speed-steps", type=int, default=5)
    p.add_argument("--out", default="ctr_planted")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    cfg = load_yaml(args.synth, SynthConfig)
    manifest_path = args.build / "manifest.json"
    if not manifest_path.is_file() or json.loads(manifest_path.read_text())["config"] != cfg.model_dump():
        generate(cfg, args.build)  # (re)generate when absent or built from another config
    manifest = json.loads(manifest_path.read_text())
    task = CTRTask(args.build, max_history=2000, eval_batch_size=256, bucket_batches=8)
    num_cats = cfg.num_categories
    ls = manifest["length_stats"]
    ns = manifest["counts"]["samples"]
    data = (f"planted synth ({args.synth.relative_to(ROOT) if args.synth.is_relative_to(ROOT) else args.synth}: "
            f"{cfg.num_users} users, {cfg.num_items} items, lengths median {ls['median']:.0f} max {ls['max']}, "
            f"{ns['train']}/{ns['valid']}/{ns['test']} train/valid/test samples, data seed {cfg.seed})")
    seeds = [int(x) for x in args.seeds.split(",")]
    command = (f"OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.ctr_planted --epochs {args.epochs} "
               f"--batch-size {args.batch_size} --lr {args.lr} --seeds {args.seeds} --models {args.models} "
               f"--out {args.out}")
    budget = (f"same budget for all models: Adam lr {args.lr}, {args.epochs} epochs, batch {args.batch_size}, "
              f"test at the best-valid-AUC epoch, 1 CPU thread")
    names = args.models.split(",")
    per_seed: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    rows: list[dict] = []
    for seed in seeds:
        results, models = {}, {}
        for name in names:
            model, res = train_and_eval(task, MODELS[name], num_cats, args, seed)
            results[name], models[name] = res, model
            logging.info("seed %d %s: %s", seed, name, json.dumps(res))
            for metric in ("auc", "gauc", "logloss"):
                per_seed[name].setdefault(metric, []).append(res[metric])
                rows.append(row(name="ctr_planted", model=name, dataset=data, metric=f"test/{metric}", value=res[metric],
                                protocol=f"planted CTR split (test prefix = full history, histories <= 2000), {budget}; "
                                         f"valid AUC per epoch {res['valid_curve']}; train {res['train_seconds']:.0f} s",
                                seed=seed, command=command))
            if name in ("twin", "dare"):
                ndcg, n = retrieval_ndcg(task, model, args.build)
                per_seed[name].setdefault("retrieval_ndcg@20", []).append(ndcg)
                rows.append(row(name="ctr_planted", model=name, dataset=data, metric="retrieval_ndcg@20", value=ndcg,
                                protocol=f"top-20 search vs planted relevant positions, {n} test targets with any; {budget}",
                                seed=seed, command=command))
            write_rows(args.out, rows)
        if "sdim" in results and "full_attn" in results:
            gap = results["full_attn"]["auc"] - results["sdim"]["auc"]
            per_seed["sdim"].setdefault("gap", []).append(gap)
            rows.append(row(name="ctr_planted", model="sdim", dataset=data, metric="test_auc_gap_vs_full_attention",
                            value=gap, reference=results["full_attn"]["auc"], seed=seed, command=command,
                            protocol=f"AUC(full dot-product target attention over the whole history) - AUC(SDIM); "
                                     f"bar: <= 0.003; {budget}"))
        write_rows(args.out, rows)
    for name in names:
        for metric, values in per_seed[name].items():
            m, sd = mean_std(values)
            label = {"gap": "test_auc_gap_vs_full_attention"}.get(metric, metric if "ndcg" in metric else f"test/{metric}")
            rows.append(row(name="ctr_planted", model=name, dataset=data, metric=f"{label} mean", value=m,
                            protocol=f"mean over seeds {args.seeds} (std {sd:.4f}, values "
                                     f"{[round(v, 4) for v in values]}); {budget}", seed=None, command=command))
    if "sdim" in names and "full_attn" in names:
        t_sdim = step_time(MODELS["sdim"], task.num_items, num_cats, 1024, 256, args.speed_steps)
        t_full = step_time(MODELS["full_attn"], task.num_items, num_cats, 1024, 256, args.speed_steps)
        rows.append(row(name="ctr_planted", model="sdim", dataset=f"random ids over the {task.num_items} planted items, L=1024",
                        metric="train_step_seconds", value=t_sdim, reference=t_full, ratio=t_full / t_sdim, seed=0,
                        command=command,
                        protocol=f"one training step (fwd+bwd+Adam), batch 256, L=1024, median of {args.speed_steps}; "
                                 "reference = full dot-product target attention over all L; ratio = speed-up (bar: >= 3x)"))
    write_rows(args.out, rows)
    summary = {n: {k: mean_std(v) for k, v in per_seed[n].items()} for n in names}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
