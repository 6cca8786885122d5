"""`recsys train CONFIG [--workers N] [--resume] [--output DIR]`: one experiment on Ray Train.

`--workers 0` runs the experiment in-process without Ray (`recsys.experiment.run_experiment`).
`--workers N >= 1` runs Ray Train's `TorchTrainer` with N workers; every worker calls the SAME
generic loop `recsys.train.fit` with its `(rank, world_size)`; rank 0 then writes the run
directory with the same `recsys.experiment.finalize_run` as `run_experiment` (weights, config,
vocab, metrics.jsonl, eval.json, index, manifest).

Design choices (and why):
- Data sharding: each worker's task is built by `recsys.experiment.build_task(cfg, rank,
  world_size)` from its parts of the partitioned build only (`layout.worker_parts(rank, world,
  num_parts)`: the sequences, CTR samples and eval negatives of its users), so a worker holds
  O(build / world) (benchmarks/train_ingest.py), rather than from a Ray Data
  `get_dataset_shard`. The tasks' vectorised batch builders need each user's whole jagged sequence
  in memory (CTR histories are prefixes of sequences, negatives exclude each user's full train set),
  and a part holds whole users; a part assignment is deterministic (Ray Data's streaming split is
  not), which keeps a restarted worker on the same data after a failure, and it keeps per-rank step
  counts known. What spans all users (next-item item frequencies and mean positions, the fixed
  validation sample, the MQSA-TED teacher graph) is combined over the workers at start-up
  (recsys/tasks/collective.py, O(items)), and validation/test are collectives: every rank scores
  its own users and the metric sums (next-item) or the (user, label, score) triples (CTR, for AUC)
  are combined, so every rank returns the metrics of all users.
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
    """Wraps this worker's task: the same number of steps on every rank and an optional step hook
    (called with (rank, global step) before every step). Validation is a collective (every rank
    scores its users; the task combines them)."""

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
        if last is None and self.steps > 0:  # the other ranks would wait in the all-reduce forever
            raise RuntimeError(f"rank {self.rank}: no training batch in its parts {getattr(self.task, 'parts', '?')} "
                               f"while other ranks run {self.steps} steps; build with more users per part")
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
        return self.task.evaluate(getattr(model, "module", model), split)


class _Evaluated:
    """The task as `finalize_run` (rank 0 only) sees it: its valid/test metrics were computed
    before by all ranks together (evaluation is a collective)."""

    def __init__(self, task: Any, metrics: dict[str, dict[str, float]]) -> None:
        self.task, self.metrics, self.primary_metric = task, metrics, task.primary_metric

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        return self.metrics[split]


def _evaluate_all(task: Any, model: torch.nn.Module) -> dict[str, dict[str, float]]:
    """valid and test metrics of `model` (a collective: every rank calls it)."""
    model.eval()
    with torch.no_grad():
        return {split: task.evaluate(model, split) for split in ("valid", "test")}


def _global_teacher(task: Any, max_len: int, time_span: int, world_size: int) -> Any:
    """The MQSA-TED teacher graph of ALL workers' users: each rank counts its users' train
    transitions and the (src, dst) counts are summed over ranks (O(distinct transitions)), the
    same graph as `TransitionGraph.from_sequences` on the whole build."""
    import numpy as np

    from recsys.models.transitions import TransitionGraph
    from recsys.tasks.collective import all_concat

    local = TransitionGraph.from_sequences(task.sequences, task.train_ends, max_len=max_len, time_span=time_span,
                                           num_items=task.num_items)
    n1 = task.num_items + 1
    src = np.repeat(np.arange(n1, dtype=np.int64), np.diff(local.indptr.numpy()))
    keys = all_concat(src * n1 + local.indices.numpy(), world_size)
    counts = all_concat(local.counts.numpy().astype(np.float64), world_size)
    key, inverse = np.unique(keys, return_inverse=True)  # sorted by (src, dst), as from_sequences
    indptr = np.zeros(n1 + 1, dtype=np.int64)
    np.cumsum(np.bincount(key // n1, minlength=n1), out=indptr[1:])
    return TransitionGraph(task.num_items, torch.from_numpy(indptr), torch.from_numpy(key % n1),
                           torch.from_numpy(np.bincount(inverse, weights=counts).astype(np.float32)))


def _global_max(value: int) -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([value], dtype=torch.int64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())
    return value


def shard_embeddings(model: torch.nn.Module, device: torch.device, *, compute_device: str,
                     embedding_optimizer: tuple[type, dict[str, Any]], sharding_type: str | None = None) -> Any:
    """torchrec DistributedModelParallel over the initialised process group: the planner
    (`EmbeddingShardingPlanner` on a `compute_device` topology of all ranks) shards the model's
    torchrec embedding tables, restricted to `sharding_type` ("row_wise", "table_wise", ...) when
    given, and the dense rest is wrapped in DDP (gradients averaged). The sharded tables are
    updated inside the backward by fbgemm's fused optimizer `embedding_optimizer` = (torch optimizer
    class, kwargs), e.g. (torch.optim.SGD, {"lr": 0.1}). A row's owner receives every rank's
    gradient, divided by the world size in torchrec's all-to-all (`comm_ops` gradient division, on
    by default), i.e. the average of data parallelism, so the same hyper-parameters give the same
    update (measured: 1 step with undivided lr / world moved rows by exactly half). The unsharded
    weights are copied into the shards. fbgemm's CPU kernels implement only
    EXACT_SGD, EXACT_ADAGRAD, EXACT_ROWWISE_ADAGRAD and EMAINPLACE_ROWWISE_ADAGRAD (Adam is
    GPU-only: "Optimizer OptimType.ADAM is not supported in CPU mode");
    tests/pipelines/test_torchrec_sharding.py trains 2 gloo CPU ranks against data parallelism."""
    from torchrec.distributed.model_parallel import DistributedModelParallel, get_default_sharders
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    world = torch.distributed.get_world_size()
    collections = [m for m in model.modules() if isinstance(m, (EmbeddingCollection, EmbeddingBagCollection))]
    if not collections:
        raise ValueError(f"{type(model).__name__} has no torchrec embedding collection to shard "
                         "(models with embedding_backend: torchrec have one)")
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer_class, kwargs = embedding_optimizer
    for collection in collections:
        apply_optimizer_in_backward(optimizer_class, collection.parameters(), kwargs)
    constraints = None
    if sharding_type is not None:
        tables = [t.name for c in collections for t in c.embedding_configs()] if hasattr(collections[0], "embedding_configs") \
            else [t.name for c in collections for t in c.embedding_bag_configs()]
        constraints = {name: ParameterConstraints(sharding_types=[sharding_type]) for name in tables}
    local = torch.cuda.device_count() if compute_device == "cuda" else world
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=world, compute_device=compute_device,
                                                         local_world_size=local or 1), constraints=constraints)
    plan = planner.collective_plan(model, get_default_sharders(), torch.distributed.GroupMember.WORLD)
    dmp = DistributedModelParallel(module=model, device=device, plan=plan)
    _copy_into_shards(dmp, initial)
    return dmp


def _copy_into_shards(dmp: torch.nn.Module, initial: dict[str, torch.Tensor]) -> None:
    """Write the unsharded initial weights into this rank's shards (the planner's kernels start
    from their own initialisation), so sharded and data-parallel runs start equal."""
    with torch.no_grad():
        for key, value in dmp.state_dict().items():
            name = key.removeprefix("module.")
            if name not in initial:
                raise KeyError(f"sharded state {key!r} has no unsharded counterpart")
            if hasattr(value, "local_shards"):  # ShardedTensor: the rows/columns this rank owns
                for shard in value.local_shards():
                    index = tuple(slice(o, o + n) for o, n in zip(shard.metadata.shard_offsets,
                                                                   shard.metadata.shard_sizes))
                    shard.tensor.copy_(initial[name][index])
            else:
                value.copy_(initial[name])


def _wrap_gpu_model(model: torch.nn.Module, device: torch.device, train_cfg: Any) -> torch.nn.Module:
    """GPU + NCCL: torchrec sharding with fbgemm's fused Adam for the tables, with `fit`'s Adam
    hyper-parameters (the sharded gradient is the data-parallel average). Not run here (no GPU in
    the test suite); the same `shard_embeddings` runs on CPU in
    tests/pipelines/test_torchrec_sharding.py. Models that read the whole table (SASRec's
    `item_embeddings()` for its logits) cannot run sharded: a rank holds only its rows."""
    if train_cfg.optimizer != "adam":
        raise ValueError(f"--gpu: train.optimizer {train_cfg.optimizer!r} has no fused embedding counterpart "
                         "here (torchrec maps torch.optim.Adam to fbgemm ADAM); use 'adam'")
    kwargs = {"lr": train_cfg.lr, "betas": tuple(train_cfg.betas), "weight_decay": train_cfg.weight_decay}
    return shard_embeddings(model, device, compute_device="cuda", embedding_optimizer=(torch.optim.Adam, kwargs))


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

    task = build_task(cfg, rank=rank, world_size=world)  # this rank's parts of the build (next-item and CTR)
    torch.manual_seed(train_cfg.seed)  # same initial weights on every rank
    model = build_model(cfg, task if world == 1 else None)
    if world > 1 and hasattr(model, "attach_teacher"):  # MQSA-TED: the teacher of all users
        mcfg = cfg.model_cfg()
        model.attach_teacher(_global_teacher(task, mcfg.max_len, getattr(mcfg, "time_span", 1), world))
    model = model.to(device)
    if use_gpu:
        model = _wrap_gpu_model(model, device, train_cfg)
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
    evaluated = _Evaluated(task, _evaluate_all(task, getattr(model, "module", model)))  # all ranks
    if rank == 0:
        finalize_run(cfg, evaluated, getattr(model, "module", model).cpu(), result, run_dir,
                     extra={"ray_workers": world})
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
