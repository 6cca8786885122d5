"""One experiment end to end: build directory -> task + model -> fit -> evaluate -> model directory.

`ExperimentConfig` is the YAML of configs/experiments/*.yaml. `run_experiment(cfg)` writes the
run directory `<output_dir>/<name>/`, which IS the model directory of recsys/artifacts.py:
    weights.safetensors  the best weights (by the task's primary validation metric)
    config.yaml          the resolved experiment config
    vocab/               copied from the build
    metrics.jsonl        the training log (one JSON per epoch)
    eval.json            final metrics with the best weights, keys "<split>/<protocol>/<metric>"
    index.faiss          item retrieval index (next-item runs)
    manifest.json        versions, code commit, sha256 of every file
Training checkpoints live in checkpoints/ while the run is going (a rerun of an unfinished run
resumes from them) and are removed at the end unless `keep_checkpoints`.
`load_run(run_dir)` loads a run back without pickle.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from recsys import artifacts
from recsys.config import StrictModel, dump_yaml, load_yaml, parse_config
from recsys.data.vocab import vocabulary_size
from recsys.losses import LossConfig
from recsys.eval.ranking import DEFAULT_KS
from recsys.models.registry import ModelConfig, model_task
from recsys.retrieval import IndexConfig
from recsys.tasks.base import TrainTask
from recsys.tasks.config import CTRTaskConfig
from recsys.train import CHECKPOINT_DIR, FitResult, TrainConfig, fit

log = logging.getLogger(__name__)

EVAL_FILE = "eval.json"


class DataConfig(StrictModel):
    build_dir: Path


class EvalConfig(StrictModel):
    #: users per evaluation batch (score matrix [batch, N+1])
    batch_size: int = Field(256, ge=1)
    #: evaluate validation (early stopping) on a fixed random sample of this many users; test uses all
    valid_max_users: int | None = Field(None, ge=1)
    ks: tuple[int, ...] = DEFAULT_KS
    #: validation metric that selects the best weights and drives early stopping (higher is
    #: better); None = the task's primary metric (next-item "full/ndcg@10", CTR "auc"). Next-item
    #: names are "<protocol>/<hr|ndcg|mrr>@<k>", protocol "full" or "sampled100", k in `ks`
    select_metric: str | None = None
    #: retrieval index saved with next-item models
    index: IndexConfig = IndexConfig()


class ExperimentConfig(StrictModel):
    name: str = Field(min_length=1)
    task: Literal["next_item", "ctr"]
    data: DataConfig
    #: the model's own config, one of recsys.models.registry.ModelConfig chosen by `name`
    model: ModelConfig
    #: CTR task settings (history cap, length bucketing); filled with the defaults for CTR runs,
    #: refused for next-item runs (whose history window is the model's max_len)
    ctr: CTRTaskConfig | None = None
    train: TrainConfig = TrainConfig()
    loss: LossConfig = LossConfig()
    eval: EvalConfig = EvalConfig()
    output_dir: Path = Path("runs")
    #: seeds model initialisation and the training loop (replaces train.seed when given)
    seed: int | None = None
    keep_checkpoints: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentConfig":
        kind = model_task(self.model.name)
        if kind != self.task:
            raise ValueError(f"model.name: {self.model.name!r} is a {kind} model but task is {self.task!r}")
        if self.task == "next_item":
            if self.ctr is not None:
                raise ValueError("ctr: only CTR experiments take a ctr section (next-item histories are model.max_len)")
            return self
        if self.ctr is None:
            self.ctr = CTRTaskConfig()  # recorded in the run's config.yaml
        max_position = getattr(self.model, "max_position", None)
        if max_position is not None and max_position < self.ctr.max_history:
            raise ValueError(f"model.max_position: {max_position} is below ctr.max_history {self.ctr.max_history}: "
                             "target-relative positions of older behaviours would all share one embedding; "
                             "set max_position >= max_history")
        return self

    def model_cfg(self) -> ModelConfig:
        """The model's typed config (kept for callers written before `model` was typed)."""
        return self.model

    def train_cfg(self) -> TrainConfig:
        return self.train if self.seed is None else self.train.model_copy(update={"seed": self.seed})

    def history_cap(self) -> int:
        """The longest history the model was trained on: ctr.max_history (CTR) or model.max_len
        (next-item). Serving should not encode more than this."""
        if self.ctr is not None:
            return self.ctr.max_history
        return int(getattr(self.model, "max_len"))

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name


def load_experiment(path: str | Path) -> ExperimentConfig:
    return load_yaml(path, ExperimentConfig)


def build_task(cfg: ExperimentConfig, *, rank: int = 0, world_size: int = 1) -> TrainTask:
    """The TrainTask of an experiment (this worker's shard)."""
    build_dir = Path(cfg.data.build_dir)
    if not build_dir.is_dir():
        raise FileNotFoundError(f"data.build_dir: {build_dir} does not exist (run `recsys data build` first)")
    task: TrainTask
    if cfg.task == "next_item":
        from recsys.tasks.next_item import NextItemTask

        max_len = getattr(cfg.model, "max_len", None)
        if max_len is None:
            raise ValueError(f"model: {cfg.model.name} config has no max_len")
        if cfg.train_cfg().bucket_by_length and cfg.loss.reduction == "batch_mean":
            log.warning("train.bucket_by_length with loss.reduction 'batch_mean': batches of short sequences "
                        "have few positions, each weighing more than under random batches; loss.reduction "
                        "'epoch_mean' keeps every position's weight (recsys/losses.py)")
        task = NextItemTask(build_dir, max_len, cfg.loss, eval_batch_size=cfg.eval.batch_size,
                            valid_max_users=cfg.eval.valid_max_users, ks=cfg.eval.ks, rank=rank,
                            world_size=world_size)
    else:
        from recsys.tasks.ctr import CTRTask

        assert cfg.ctr is not None  # filled by ExperimentConfig's validator
        # the samples of this worker's parts of the build (layout.worker_parts), all splits
        task = CTRTask.from_config(build_dir, cfg.ctr, rank=rank, world_size=world_size)
    if cfg.eval.select_metric is not None:
        names = task.metric_names()
        if cfg.eval.select_metric not in names:
            raise ValueError(f"eval.select_metric: {cfg.eval.select_metric!r} is not a {cfg.task} validation metric "
                             f"that can select weights (higher is better); choose one of {names}")
        task.primary_metric = cfg.eval.select_metric
    return task


def num_categories(build_dir: Path) -> int:
    """Categories in the build's vocabulary (0 for a build without categories)."""
    return vocabulary_size(build_dir, "categories", required=False)


def build_model(cfg: ExperimentConfig, task: TrainTask | None = None) -> torch.nn.Module:
    """Model from the registry, sized by the build's vocabularies; MQSA-TED gets its teacher
    (transition graph of the TRAIN parts of the sequences) when a next-item task is given."""
    from recsys.models.registry import build_model as registry_build

    build_dir = Path(cfg.data.build_dir)
    mcfg = cfg.model
    model = registry_build(mcfg, num_items=vocabulary_size(build_dir, "items"), num_categories=num_categories(build_dir))
    if task is not None and hasattr(model, "attach_teacher"):
        from recsys.models.transitions import TransitionGraph

        graph = TransitionGraph.from_sequences(task.sequences, task.train_ends, max_len=mcfg.max_len,
                                               time_span=getattr(mcfg, "time_span", 1), num_items=task.num_items)
        model.attach_teacher(graph)
    return model


def evaluate_model(task: TrainTask, model: torch.nn.Module, cfg: ExperimentConfig) -> dict[str, Any]:
    """Final metrics on valid and test (recsys/eval/protocol.py): flat keys
    "<split>/<protocol>/<metric>" plus the protocols and the dataset's name."""
    from recsys.eval.protocol import evaluate_splits

    return evaluate_splits(task, model, build_dir=cfg.data.build_dir, task_name=cfg.task, model_name=cfg.model.name)


def run_experiment(cfg: ExperimentConfig, *, resume: bool = True, device: str | None = None) -> Path:
    """Train, evaluate and write the model directory; returns its path."""
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    train_cfg = cfg.train_cfg()
    task = build_task(cfg)
    torch.manual_seed(train_cfg.seed)
    model = build_model(cfg, task)
    if device is not None:
        model.to(device)
    dump_yaml(cfg, run_dir / artifacts.CONFIG_FILE)
    result: FitResult = fit(model, task, train_cfg, run_dir, resume=resume, device=device)
    return finalize_run(cfg, task, model, result, run_dir)


def finalize_run(cfg: ExperimentConfig, task: TrainTask, model: torch.nn.Module, result: FitResult, run_dir: Path,
                 *, extra: dict[str, Any] | None = None) -> Path:
    """The end of a run, after `fit` (in-process or rank 0 of a Ray Train job): eval.json (valid and
    test with the model's current = best weights, plus the fit summary), weights, vocab copy,
    retrieval index (next-item), checkpoint cleanup (unless `keep_checkpoints`) and the manifest.
    `extra` is merged into eval.json's "fit" and the manifest (e.g. {"ray_workers": 2}).
    Returns `run_dir`."""
    run_dir = Path(run_dir)
    extra = dict(extra or {})
    evaluation = evaluate_model(task, model, cfg)
    evaluation["fit"] = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                         "stop_reason": result.stop_reason, "train_seconds": result.seconds,
                         "budget_clock": result.budget_clock,
                         "best_valid_" + task.primary_metric: result.best_metric, **extra}
    (run_dir / EVAL_FILE).write_text(json.dumps(evaluation, indent=1, sort_keys=True))
    artifacts.save_weights(model, run_dir / artifacts.WEIGHTS_FILE)
    artifacts.copy_vocab(cfg.data.build_dir, run_dir)
    if cfg.task == "next_item":
        from recsys.retrieval import build_index, save_index

        with torch.no_grad():
            save_index(build_index(model.item_embeddings(), cfg.eval.index), run_dir / artifacts.INDEX_FILE)
    if not cfg.keep_checkpoints:
        shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    artifacts.write_manifest(run_dir, extra={"name": cfg.name, "task": cfg.task, "model": cfg.model.name,
                                             "build_dir": str(cfg.data.build_dir), **extra})
    return run_dir


@dataclass
class LoadedRun:
    model: torch.nn.Module
    config: ExperimentConfig
    vocabs: dict[str, Any]
    build_dir: Path
    run_dir: Path


def load_run(run_dir: str | Path, *, verify: bool = True, device: str = "cpu") -> LoadedRun:
    """Model (weights from safetensors, eval mode), config and vocabularies of a run directory."""
    from recsys.data.vocab import load_vocabularies

    run_dir = Path(run_dir)
    if not (run_dir / artifacts.CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {artifacts.CONFIG_FILE})")
    if verify and (run_dir / artifacts.MANIFEST_FILE).is_file():
        artifacts.verify_manifest(run_dir)
    cfg = load_yaml(run_dir / artifacts.CONFIG_FILE, ExperimentConfig)
    vocabs = load_vocabularies(run_dir / artifacts.VOCAB_DIR)
    from recsys.models.registry import build_model as registry_build

    model = registry_build(cfg.model, num_items=len(vocabs["items"]),
                           num_categories=len(vocabs["categories"]) if "categories" in vocabs else 0)
    artifacts.load_weights(model, run_dir / artifacts.WEIGHTS_FILE)
    model.to(device).eval()
    return LoadedRun(model=model, config=cfg, vocabs=vocabs, build_dir=Path(cfg.data.build_dir), run_dir=run_dir)


def parse_experiment(data: dict[str, Any], source: str = "<experiment>") -> ExperimentConfig:
    return parse_config(data, ExperimentConfig, source=source)
