"""`recsys evaluate RUN_DIR`: re-evaluate a trained run on its build's validation and test splits
and print every number with its protocol, split and dataset; plus the popularity baseline
(score = train-part frequency of the item) used as the floor in tests and benchmarks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


class PopularityModel(nn.Module):
    """Scores every item by its train-part frequency (1-d embeddings: user = 1, item = count),
    so it plugs into NextItemTask.evaluate like any next-item model."""

    def __init__(self, item_counts: np.ndarray) -> None:
        super().__init__()
        self.counts = nn.Parameter(torch.as_tensor(item_counts, dtype=torch.float32)[:, None], requires_grad=False)

    def item_embeddings(self) -> torch.Tensor:
        return self.counts  # [N+1,1]

    def user_embedding(self, seq: torch.Tensor) -> torch.Tensor:
        return torch.ones(seq.shape[0], 1, device=self.counts.device)  # [B,1]


def popularity_metrics(task: Any, split: str) -> dict[str, float]:
    return task.evaluate(PopularityModel(task.item_counts), split)


def evaluate_run(run_dir: str | Path, splits: tuple[str, ...] = ("valid", "test"), device: str = "cpu"
                 ) -> dict[str, Any]:
    """Metrics of a run directory's model, keys "<split>/<protocol>/<metric>"."""
    from recsys.experiment import build_task, load_run

    run = load_run(run_dir, device=device)
    task = build_task(run.config)
    out: dict[str, Any] = {"dataset": str(run.build_dir), "model": run.config.model["name"], "task": run.config.task}
    for split in splits:
        with torch.no_grad():
            out.update({f"{split}/{k}": float(v) for k, v in task.evaluate(run.model, split).items()})
    if run.config.task == "next_item":
        from recsys.tasks.next_item import PROTOCOLS

        out["protocols"] = PROTOCOLS
    return out


def format_metrics(result: dict[str, Any]) -> str:
    """Human-readable lines, each naming protocol, split and dataset."""
    lines = []
    protocols = result.get("protocols", {})
    dataset = Path(str(result.get("dataset", "?"))).name
    for key, value in result.items():
        if not isinstance(value, float) or key.endswith("num_users"):
            continue
        parts = key.split("/")
        split, proto, metric = (parts + ["", ""])[:3] if len(parts) >= 3 else (parts[0], "", parts[-1])
        desc = protocols.get(proto, proto)
        lines.append(f"{metric:>8s} = {value:.4f}   [{proto}: {desc}; split {split}; dataset {dataset}]")
    return "\n".join(lines)


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.description = "Evaluate a trained run (full ranking + sampled-100 for next-item models)."
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", choices=["valid", "test"], action="append",
                        help="split(s) to evaluate (default: both)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    result = evaluate_run(args.run_dir, tuple(args.split or ("valid", "test")), device=args.device)
    print(json.dumps(result, indent=1) if args.json else format_metrics(result))
    return 0
