"""DARE's efficiency trade-off (paper Fig. 11c): attention-embedding dimension 16 vs 64 per field
(item, category, position; representation fields fixed at 64): top-K search time and AUC.

Search time: `kernels.ops.topk_target_search` (the op DARE calls; the PyTorch reference on CPU) on
random queries/keys, B users x C candidates x L history, median of `--reps` after a warm-up.
AUC: both variants trained on the planted benchmark build (configs/synth/planted_bench.yaml) with the
same budget as benchmarks/ctr_planted.py; test AUC at the best-validation-AUC epoch.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.dare_attention_dim
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from benchmarks.common import ROOT, ensure_synth, median_seconds
from benchmarks.ctr_planted import train_and_eval
from benchmarks.results import row, write_rows
from recsys.config import load_yaml
from recsys.data.synth import SynthConfig
from recsys.tasks.ctr import CTRTask



def search_seconds(dim: int, b: int, c: int, length: int, k: int, reps: int) -> float:
    from kernels import ops

    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, c, dim, generator=g)
    keys = torch.randn(b, length, dim, generator=g)
    lengths = torch.full((b,), length)
    return median_seconds(lambda: ops.topk_target_search(q, keys, lengths, k), reps, warmup=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", default="16,64")
    p.add_argument("--rep-dim", type=int, default=64)
    p.add_argument("--synth", type=Path, default=ROOT / "configs/synth/planted_bench.yaml")
    p.add_argument("--build", type=Path, default=ROOT / "runs/planted_bench/build")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--max-history", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--skip-auc", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    dims = [int(x) for x in args.dims.split(",")]
    command = (f"OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.dare_attention_dim --dims {args.dims} "
               f"--rep-dim {args.rep_dim} --epochs {args.epochs} --batch-size {args.batch_size} --lr {args.lr} "
               f"--max-history {args.max_history} --seed {args.seed} --reps {args.reps}"
               + (" --skip-auc" if args.skip_auc else ""))
    rows, out = [], {}
    b, c, length, k = 64, 16, 2000, 20
    base = None
    for d in dims:  # total attention width = 3 fields x d
        t = search_seconds(3 * d, b, c, length, k, args.reps)
        base = base or t
        out[f"search_s/d{d}"] = t
        rows.append(row(name="dare_attention_dim", model=f"dare (attention {d}/field)", dataset="random",
                        metric="search_seconds", value=t, reference=base, ratio=t / base, seed=0, command=command,
                        protocol=f"topk_target_search (CPU reference) B={b} users x C={c} candidates x L={length}, "
                                 f"K={k}, width 3x{d}; median of {args.reps}; reference = first dim"))
    if not args.skip_auc:
        cfg = load_yaml(args.synth, SynthConfig)
        ensure_synth(args.synth, args.build)
        task = CTRTask(args.build, max_history=args.max_history, eval_batch_size=256, bucket_pool=8)
        for d in dims:
            spec = {"name": "dare", "item_dim": args.rep_dim, "cat_dim": args.rep_dim, "pos_dim": args.rep_dim,
                    "attention_item_dim": d, "attention_cat_dim": d, "attention_pos_dim": d, "top_k": 20,
                    "use_aux_loss": True}
            _, res = train_and_eval(task, spec, cfg.num_categories, args, args.seed)
            out[f"auc/d{d}"] = res["auc"]
            logging.info("d=%d %s", d, json.dumps(res))
            rows.append(row(name="dare_attention_dim", model=f"dare (attention {d}/field)",
                            dataset=f"planted synth ({cfg.num_users} users, seed {cfg.seed})", metric="test/auc",
                            value=res["auc"], seed=args.seed, command=command,
                            protocol=f"planted CTR test split, histories <= {args.max_history}, representation "
                                     f"{args.rep_dim}/field, Adam lr {args.lr}, {args.epochs} epochs, batch "
                                     f"{args.batch_size}, best-valid-AUC epoch; valid AUC per epoch "
                                     f"{res['valid_curve']}"))
            write_rows("dare_attention_dim", rows)
    write_rows("dare_attention_dim", rows)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
