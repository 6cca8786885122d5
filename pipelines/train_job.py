"""`recsys train CONFIG [--workers N] [--resume] [--output DIR]`: one experiment on Ray Train.

`--workers 0` runs the experiment in-process without Ray (`recsys.experiment.run_experiment`).
`--workers N >= 1` runs Ray Train's `TorchTrainer` with N workers; every worker calls the SAME
generic loop `recsys.train.fit` with its `(rank, world_size)`; rank 0 then writes the run
directory with the same `recsys.experiment.finalize_run` as `run_experiment` (weights, config,
vocab, metrics.jsonl, eval.json, index, manifest).

Design choices (and why):
- Data sharding: each worker's task is built by `recsys.experiment.build_task(cfg, rank,
  world_size)` from the build's parquet (strided shard of the training users / CTR samples), rather
  than from a Ray Data `get_dataset_shard`. The tasks' vectorised batch builders need every user's
  whole jagged sequence in memory (CTR histories are prefixes of sequences, negatives exclude each
  user's full train set, validation scores all users), so a Ray Data shard would only select row
  ids; a strided shard is deterministic (Ray Data's streaming split is not), which keeps a resumed
  run on the same data per rank after a worker failure, and it keeps per-rank step counts known.
  Steps are equalised across ranks (`_EqualSteps`): the shorter shard repeats its last batch so the
  per-step gradient all-reduce never waits on a rank that has finished its epoch.
- Dense parameters: data parallel. `fit` all-reduces (averages) every gradient each step when a
  process group is up (gloo on CPU, set up by Ray Train) - the arithmetic of DDP. DDP's wrapper
  itself is not used on CPU because the models train through `training_loss(batch)`, not
  `forward`, and DDP only synchronises inside `forward`. Embeddings are data-parallel on CPU.
- GPUs (`--gpu`): the model is wrapped in torchrec `DistributedModelParallel`, whose planner
  (`EmbeddingShardingPlanner` over the cluster topology) shards the torchrec embedding tables
  (`embedding_backend: torchrec` models) across workers and wraps the dense rest in DDP. This path
  needs CUDA + NCCL and is not exercised by the CPU test suite.
- Checkpoints: `fit` writes its exact-resume checkpoint at the end of every epoch and then calls
  its `on_epoch_end` hook on every worker, which reports to Ray Train
  (`ray.train.report(metrics, checkpoint=...)`; every worker must call it, rank 0 attaches the
  checkpoint); a last report (metrics only) follows rank 0 writing the run directory. `FailureConfig(max_failures)` restarts the worker group after a worker dies, and
  each restarted worker restores the latest reported checkpoint (`ray.train.get_checkpoint()`)
  into the run directory before calling `fit(resume=True)`.
- Hook for tests: `train_with_ray(step_hook=...)` ships a callable to the workers that each worker
  calls as `step_hook(rank, global_step)` before every step (the failure-injection test makes a worker
  exit there; tests/pipelines/failure.py). Production runs pass none.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from recsys.experiment import ExperimentConfig
from recsys.tasks.base import TrainTask

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("checkpoint.safetensors", "checkpoint.json", "best.safetensors")


# ----------------------------------------------------------------------------------------------
# the task seen by fit inside a Ray worker
StepHook = Callable[[int, int], None]


class _EqualSteps:
    """Wraps this worker's task: the same number of steps on every rank, an optional step hook
    (called with (rank, global step) before every step), and validation computed on rank 0 only
    (fit broadcasts rank 0's value; other ranks skip the work)."""

    def __init__(self, task: TrainTask, rank: int, world_size: int, steps: int, step_hook: StepHook | None = None
                 ) -> None:
        self.task, self.rank, self.world_size, self.steps = task, rank, world_size, steps
        self.step_hook = step_hook
        self.primary_metric = task.primary_metric
        self.global_step = 0
        self.last_loss: float | None = None

    def num_train_batches(self, batch_size: int) -> int:
        return self.steps

    def train_batches(self, epoch: int, batch_size: int, generator: torch.Generator,
                      bucket_by_length: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        self.global_step = (epoch - 1) * self.steps
        n, last = 0, None
        for batch in self.task.train_batches(epoch, batch_size, generator, bucket_by_length=bucket_by_length):
            if n == self.steps:
                break
            self._maybe_fail()
            yield batch
            n, last = n + 1, batch
            self.global_step += 1
        while n < self.steps and last is not None:  # shorter shard: repeat its last batch
            self._maybe_fail()
            yield last
            n += 1
            self.global_step += 1

    def _maybe_fail(self) -> None:
        if self.step_hook is not None:
            self.step_hook(self.rank, self.global_step)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = self.task.loss(getattr(model, "module", model), batch)
        self.last_loss = float(loss.detach())
        return loss, logs

    def metric_names(self) -> list[str]:
        return self.task.metric_names()

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        if self.rank != 0:
            return {self.primary_metric: float("nan")}  # replaced by rank 0's value (broadcast in fit)
        return self.task.evaluate(getattr(model, "module", model), split)


def _global_max(value: int) -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([value], dtype=torch.int64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())
    return value


def _wrap_gpu_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """torchrec DistributedModelParallel: the planner shards the embedding tables over the workers,
    the dense rest is wrapped in DDP. GPU + NCCL only (not run on CPU)."""
    from torchrec.distributed.model_parallel import DistributedModelParallel, get_default_sharders
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology

    world = torch.distributed.get_world_size()
    topology = Topology(world_size=world, compute_device="cuda", local_world_size=torch.cuda.device_count() or 1)
    planner = EmbeddingShardingPlanner(topology=topology)
    plan = planner.collective_plan(model, get_default_sharders(), torch.distributed.GroupMember.WORLD)
    return DistributedModelParallel(module=model, device=device, plan=plan)


def _restore_checkpoint(run_dir: Path, rank: int) -> bool:
    """Copy the latest Ray Train checkpoint's files into run_dir/checkpoints (rank 0; the others
    read the same files after a barrier: workers share the run directory)."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None and rank == 0:
        from recsys.train import CHECKPOINT_DIR

        dst = run_dir / CHECKPOINT_DIR
        dst.mkdir(parents=True, exist_ok=True)
        with ckpt.as_directory() as d:
            for name in CHECKPOINT_FILES:
                if (Path(d) / name).is_file():
                    tmp = dst / (name + ".restore")
                    shutil.copyfile(Path(d) / name, tmp)
                    os.replace(tmp, dst / name)
        state = json.loads((dst / "checkpoint.json").read_text()).get("loop", {}) if (dst / "checkpoint.json").is_file() else {}
        with (run_dir / "ray_restores.jsonl").open("a") as fh:  # provenance: which checkpoint a restart used
            fh.write(json.dumps({"checkpoint": str(ckpt.path), "epoch": state.get("epoch"),
                                 "global_step": state.get("global_step"), "time": time.time()}) + "\n")
        log.info("restored Ray Train checkpoint %s (epoch %s) into %s", ckpt.path, state.get("epoch"), dst)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return ckpt is not None


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: build this rank's task and the model, run `fit`, rank 0 writes the run dir."""
    import ray.train

    from recsys.experiment import build_model, build_task, finalize_run, parse_experiment
    from recsys.train import CHECKPOINT_DIR, fit

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = parse_experiment(config["experiment"], source="train job")
    run_dir = Path(config["run_dir"])
    train_cfg = cfg.train_cfg()
    use_gpu = bool(config.get("use_gpu"))
    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")

    task = build_task(cfg, rank=rank, world_size=world)  # this rank's strided shard (next-item and CTR)
    torch.manual_seed(train_cfg.seed)  # same initial weights on every rank
    model = build_model(cfg, task).to(device)
    if use_gpu:
        model = _wrap_gpu_model(model, device)
    restored = _restore_checkpoint(run_dir, rank)
    steps = _global_max(task.num_train_batches(train_cfg.batch_size))
    metrics_path = run_dir / "metrics.jsonl"

    def report(epoch: int, final: dict[str, Any] | None = None) -> None:
        """All ranks report; after an epoch (`final` None) rank 0 attaches its checkpoint directory."""
        metrics: dict[str, Any] = {"epoch": epoch, "rank0_last_loss": wrapped.last_loss}
        if rank == 0 and metrics_path.exists():
            lines = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
            if lines:
                metrics.update({k: v for k, v in lines[-1].items() if isinstance(v, (int, float)) and v is not None})
        metrics.update(final or {})
        ckpt = None
        if final is None and rank == 0 and (run_dir / CHECKPOINT_DIR / CHECKPOINT_FILES[0]).is_file():
            stage = Path(tempfile.mkdtemp(prefix="ckpt_", dir=run_dir))
            for name in CHECKPOINT_FILES:
                src = run_dir / CHECKPOINT_DIR / name
                if src.is_file():
                    shutil.copyfile(src, stage / name)
            ckpt = ray.train.Checkpoint.from_directory(str(stage))
        ray.train.report(metrics, checkpoint=ckpt)
        if ckpt is not None:
            shutil.rmtree(ckpt.path, ignore_errors=True)  # Ray has persisted its own copy

    wrapped = _EqualSteps(task, rank, world, steps, config.get("step_hook"))
    result = fit(model, wrapped, train_cfg, run_dir, resume=restored or bool(config.get("resume")),
                 rank=rank, world_size=world, device=device, on_epoch_end=lambda epoch, _ckpt: report(epoch))
    final = {"best_metric": result.best_metric, "best_epoch": result.best_epoch, "done": 1}
    if rank == 0:
        finalize_run(cfg, task, getattr(model, "module", model).cpu(), result, run_dir, extra={"ray_workers": world})
    report(result.epochs_run, final)


# ----------------------------------------------------------------------------------------------
# driver
def ensure_ray(num_cpus: int | None = 2) -> None:
    """Start a local Ray (no dashboard) unless one is already running in this process."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}})


def train_with_ray(cfg: ExperimentConfig, workers: int, *, resume: bool = False, use_gpu: bool = False, max_failures: int = 1,
                   step_hook: StepHook | None = None, storage_path: str | Path | None = None) -> Path:
    """Run experiment `cfg` on Ray Train with `workers` workers; returns the run directory."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from recsys.config import dump_yaml

    if workers < 1:
        raise ValueError(f"--workers: need >= 1 for Ray Train (0 runs in-process), got {workers}")
    run_dir = Path(cfg.run_dir).resolve()
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run; --resume continues from run_dir/checkpoints
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, run_dir / "config.yaml")
    ensure_ray()
    # Ray Train's own files live next to (not inside) the run directory, whose manifest covers every file
    storage = Path(storage_path) if storage_path else run_dir.parent / "_ray_results"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": cfg.model_dump(mode="json"), "run_dir": str(run_dir), "resume": resume,
                           "use_gpu": use_gpu, "step_hook": step_hook},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": 1}),
        run_config=RunConfig(name=f"{cfg.name}-{int(time.time())}", storage_path=str(storage.resolve()),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"Ray Train run {cfg.name} failed: {result.error}") from result.error
    if not (run_dir / "eval.json").is_file():
        raise RuntimeError(f"Ray Train run {cfg.name} finished without writing {run_dir / 'eval.json'}")
    return run_dir


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.description = "Train one experiment (configs/experiments/*.yaml), in-process or on Ray Train."
    parser.add_argument("config", help="experiment YAML")
    parser.add_argument("--workers", type=int, default=0, help="Ray Train workers; 0 = in-process without Ray")
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    parser.add_argument("--output", default=None, help="parent folder of the run directory (overrides output_dir)")
    parser.add_argument("--gpu", action="store_true", help="GPU workers: NCCL + torchrec DistributedModelParallel")
    parser.add_argument("--max-failures", type=int, default=1, help="worker-group restarts Ray Train may do")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from recsys.experiment import load_experiment, run_experiment

    if args.workers < 0:
        raise SystemExit(f"--workers must be >= 0, got {args.workers}")
    cfg = load_experiment(args.config)
    if args.output:
        cfg = cfg.model_copy(update={"output_dir": Path(args.output)})
    if args.workers == 0:
        run_dir = run_experiment(cfg, resume=args.resume)
    else:
        run_dir = train_with_ray(cfg, args.workers, resume=args.resume, use_gpu=args.gpu, max_failures=args.max_failures)
    evaluation = json.loads((Path(run_dir) / "eval.json").read_text())
    for key in sorted(k for k in evaluation if k.startswith("test/")):
        print(f"{key}: {evaluation[key]:.4f}  ({cfg.task}, {Path(cfg.data.build_dir).name})")
    print(f"run directory: {run_dir}")
    return 0
