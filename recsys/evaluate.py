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

from recsys.eval.protocol import evaluate_splits, format_metrics

__all__ = ["PopularityModel", "popularity_metrics", "evaluate_run", "format_metrics", "configure_cli"]


class PopularityModel(nn.Module):
    """Scores every item by its train-part frequency (1-d embeddings: user = 1, item = count),
    so it plugs into NextItemTask.evaluate like any next-item model."""

    def __init__(self, item_counts: np.ndarray) -> None:
        super().__init__()
        self.counts = nn.Parameter(torch.as_tensor(item_counts, dtype=torch.float32)[:, None], requires_grad=False)

    def item_embeddings(self) -> torch.Tensor:
        return self.counts  # [N+1,1]

    def user_embedding(self, items: torch.Tensor) -> torch.Tensor:
        return torch.ones(items.shape[0], 1, device=self.counts.device)  # [B,1]


def popularity_metrics(task: Any, split: str) -> dict[str, float]:
    return task.evaluate(PopularityModel(task.item_counts), split)


def evaluate_run(run_dir: str | Path, splits: tuple[str, ...] = ("valid", "test"), device: str = "cpu"
                 ) -> dict[str, Any]:
    """Metrics of a run directory's model, keys "<split>/<protocol>/<metric>" (as eval.json)."""
    from recsys.experiment import build_task, load_run

    run = load_run(run_dir, device=device)
    return evaluate_splits(build_task(run.config), run.model, build_dir=run.build_dir, task_name=run.config.task,
                           model_name=run.config.model.name, splits=splits)


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
