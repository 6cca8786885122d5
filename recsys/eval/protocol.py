"""Evaluate a model on a task's splits and describe what was measured.

`evaluate_splits` is the single path from (task, model) to the flat metric dict written to a run's
eval.json and printed by `recsys evaluate`: keys "<split>/<protocol>/<metric>" for next-item and
"<split>/<metric>" for CTR, plus "dataset" (the build's own name), "task", "model" and
"protocols" (protocol name -> description), so every printed number can name its protocol.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import torch


class Evaluable(Protocol):
    """What evaluation needs of a task (recsys/tasks/base.py TrainTask has it; declared here so the
    evaluation core does not import the tasks, which import it)."""

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]: ...

#: the next-item protocols (recsys/tasks/next_item.py builds their candidates)
NEXT_ITEM_PROTOCOLS = {
    "full": "full ranking over all items, user's history excluded, leave-one-out",
    "sampled100": "true item + 100 persisted negatives the user never interacted with, leave-one-out",
}
#: the protocol name of CTR metrics (their keys carry none)
CTR_PROTOCOL = "ctr"


def ctr_protocol(max_history: int) -> str:
    return (f"CTR impressions of the build's split (AUC over all rows, GAUC per user with both classes, "
            f"logloss), history = the {max_history} most recent behaviours before the target")


def dataset_name(build_dir: str | Path) -> str:
    """The build's own name (its manifest's "name"; "planted synth ..." for generated data); the
    folder name only when the manifest names nothing."""
    build_dir = Path(build_dir)
    path = build_dir / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    for key in ("name", "dataset"):
        if isinstance(manifest.get(key), str) and manifest[key]:
            return manifest[key]
    if manifest.get("source") == "synth":
        counts = manifest.get("counts", {})
        return f"planted synth ({counts.get('users', '?')} users, config {manifest.get('config_hash', '?')})"
    return build_dir.parent.name if build_dir.name == "build" else build_dir.name


def protocols_of(task: Evaluable) -> dict[str, str]:
    """Protocol name -> description for the metrics `task.evaluate` returns."""
    max_history = getattr(task, "max_history", None)
    if max_history is not None:
        return {CTR_PROTOCOL: ctr_protocol(int(max_history))}
    return dict(NEXT_ITEM_PROTOCOLS)


def evaluate_splits(task: Evaluable, model: torch.nn.Module, *, build_dir: str | Path, task_name: str,
                    model_name: str, splits: tuple[str, ...] = ("valid", "test")) -> dict[str, Any]:
    """Metrics of `model` on `splits` (eval mode, no grad) with their protocols and dataset."""
    out: dict[str, Any] = {"dataset": dataset_name(build_dir), "build_dir": str(build_dir), "task": task_name,
                           "model": model_name, "protocols": protocols_of(task)}
    model.eval()
    for split in splits:
        with torch.no_grad():
            metrics = task.evaluate(model, split)
        out.update({f"{split}/{k}": float(v) for k, v in metrics.items()})
    return out


def format_metrics(result: dict[str, Any]) -> str:
    """Human-readable lines, each naming protocol, split and dataset."""
    protocols = result.get("protocols", {})
    dataset = result.get("dataset", "?")
    lines = []
    for key, value in result.items():
        if not isinstance(value, float) or key.endswith(("num_users", "num_samples")):
            continue
        parts = key.split("/")
        if len(parts) >= 3:
            split, proto, metric = parts[0], parts[1], "/".join(parts[2:])
        else:
            split, proto, metric = parts[0], CTR_PROTOCOL, parts[-1]
        desc = protocols.get(proto, proto)
        lines.append(f"{metric:>8s} = {value:.4f}   [{proto}: {desc}; split {split}; dataset {dataset}]")
    return "\n".join(lines)
