"""One run directory as the report reads it: `RunDir` knows the file names (recsys/artifacts.py,
recsys/train.py, recsys/experiment.py) and reads each file once; `read_run` turns it into the
`RunSummary` the rest of the report fills in and renders."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from recsys import artifacts
from recsys.config import load_yaml
from recsys.eval.protocol import dataset_name
from recsys.experiment import EVAL_FILE, ExperimentConfig
from recsys.train import METRICS_FILE


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: {what} is not valid JSON ({exc})") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: training log line is not valid JSON ({exc})") from None
    return out


class RunDir:
    """The files of a finished run directory (recsys/experiment.py writes them)."""

    REQUIRED = (artifacts.CONFIG_FILE, METRICS_FILE, EVAL_FILE, artifacts.MANIFEST_FILE)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"run directory not found: {self.path}")
        missing = [f for f in self.REQUIRED if not (self.path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.path}: not a finished run directory, missing {', '.join(missing)}")

    @cached_property
    def config_text(self) -> str:
        return (self.path / artifacts.CONFIG_FILE).read_text()

    @cached_property
    def config(self) -> ExperimentConfig:
        """The typed experiment config (errors name the field)."""
        return load_yaml(self.path / artifacts.CONFIG_FILE, ExperimentConfig)

    @cached_property
    def history(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.path / METRICS_FILE)

    @cached_property
    def eval_json(self) -> dict[str, Any]:
        return _read_json(self.path / EVAL_FILE, EVAL_FILE)

    @cached_property
    def manifest(self) -> dict[str, Any]:
        return _read_json(self.path / artifacts.MANIFEST_FILE, "run manifest")

    @property
    def build_dir(self) -> Path:
        return Path(self.config.data.build_dir)

    @cached_property
    def build_manifest(self) -> dict[str, Any] | None:
        path = self.build_dir / artifacts.MANIFEST_FILE
        return _read_json(path, "build manifest") if path.is_file() else None

    @cached_property
    def weights_size(self) -> tuple[int | None, int | None]:
        """(number of parameters, bytes) of weights.safetensors; (None, None) without it."""
        path = self.path / artifacts.WEIGHTS_FILE
        if not path.is_file():
            return None, None
        from safetensors import safe_open

        n = 0
        with safe_open(str(path), framework="np") as fh:
            for k in fh.keys():
                n += int(np.prod(fh.get_slice(k).get_shape()))
        return n, path.stat().st_size


@dataclass
class RunSummary:
    run_dir: Path
    name: str
    task: str
    model: str
    dataset: str
    primary: str
    config_text: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    eval_json: dict[str, Any]
    manifest: dict[str, Any]
    build_dir: str | None
    build_manifest: dict[str, Any] | None
    num_parameters: int | None
    weights_bytes: int | None
    metrics: list[Any] = field(default_factory=list)
    by_length: list[dict[str, Any]] = field(default_factory=list)
    planted: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "run_dir": str(self.run_dir),
            "task": self.task,
            "model": self.model,
            "dataset": self.dataset,
            "primary_metric": self.primary,
            "code_version": self.manifest.get("code_version"),
            "num_parameters": self.num_parameters,
            "weights_bytes": self.weights_bytes,
            "metrics": [m.as_dict() for m in self.metrics],
            "by_history_length": self.by_length,
            "planted_truth": self.planted,
            "eval_json": self.eval_json,
            "training_log": self.history,
            "config": self.config,
            "manifest": self.manifest,
            "build_dir": self.build_dir,
            "build_manifest": self.build_manifest,
        }


def read_run(run_dir: str | Path) -> RunSummary:
    """The files of one run directory (no scoring yet); errors name the missing file/field."""
    rd = RunDir(run_dir)
    cfg = rd.config
    n_params, n_bytes = rd.weights_size
    return RunSummary(
        run_dir=rd.path,
        name=cfg.name or rd.path.name,
        task=cfg.task,
        model=cfg.model.name,
        dataset=dataset_name(rd.build_dir),
        primary="ndcg@10" if cfg.task == "next_item" else "auc",
        config_text=rd.config_text,
        config=cfg.model_dump(mode="json"),
        history=rd.history,
        eval_json=rd.eval_json,
        manifest=rd.manifest,
        build_dir=str(rd.build_dir),
        build_manifest=rd.build_manifest,
        num_parameters=n_params,
        weights_bytes=n_bytes,
    )


def read_benchmarks(bench_dir: str | Path | None) -> list[dict[str, Any]]:
    """All rows of benchmarks/results/*.json, each tagged with its file name."""
    if bench_dir is None or not Path(bench_dir).is_dir():
        return []
    rows = []
    for path in sorted(Path(bench_dir).glob("*.json")):
        data = _read_json(path, "benchmark result table")
        if not isinstance(data, list):
            raise ValueError(f"{path}: benchmark results must be a list of rows, got {type(data).__name__}")
        rows.extend({"file": path.stem, **r} for r in data if isinstance(r, dict))
    return rows
