"""The generic training loop: optimisation, clipping, early stopping, checkpoint/resume, progress
and logging for any `TrainTask` (recsys/tasks/base.py).

Why it looks like this:
- It is called unchanged from a Ray Train worker: no module-level state, no signal handlers,
  files are written by rank 0 only, the task already holds the worker's shard. With
  `world_size > 1` and an initialised `torch.distributed` process group, gradients are averaged
  with an all-reduce (so any model works, no DDP wrapper needed) and rank 0's validation result
  drives early stopping on every rank.
- Resume is exact: a checkpoint written at the end of every epoch holds the model, the optimizer
  state, every rank's task generator and torch RNG (dropout) and the loop counters, so a killed and
  resumed run ends with parameters identical to an uninterrupted one (tested).
  Checkpoint format: recsys/checkpoints.py.
- One epoch is `_train_epoch` (steps, budget check, the epoch's log record), then `_validate`
  (metrics, best weights, early stopping), then `_end_epoch` (log line, checkpoint, hook); what
  survives between epochs and goes into the checkpoint is the `LoopState`.
- Layout under `run_dir`: checkpoints/checkpoint.safetensors (+ .json), checkpoints/best.safetensors
  (best weights by the task's primary validation metric), metrics.jsonl (one JSON per epoch).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import Field
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from recsys.checkpoints import (
    BEST_FILE,
    CHECKPOINT_DIR,
    CHECKPOINT_FILE,
    CHECKPOINT_JSON,
    atomic_save,
    atomic_write_text,
    gather_rng_states,
    load_checkpoint,
    save_checkpoint,
    unwrap,
)
from recsys.config import StrictModel
from recsys.tasks.base import Batch, TrainTask

__all__ = ["BEST_FILE", "CHECKPOINT_DIR", "CHECKPOINT_FILE", "CHECKPOINT_JSON", "METRICS_FILE", "FitResult",
           "LoopState", "TrainConfig", "budget_timer", "fit", "make_optimizer", "make_weight_average"]

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class TrainConfig(StrictModel):
    """Optimisation settings of one run (the `train:` section of an experiment)."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "adamw"] = "adam"
    #: torch's fused Adam kernels (one pass per tensor; measured 7x faster than the default on a
    #: 23.7k x 50 item table on one CPU thread); False = torch's default implementation, whose
    #: rounding differs: results trained with it (benchmarks/ctr_planted.py) reproduce bitwise only so
    fused_optimizer: bool = True
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = Field(0.0, ge=0)
    #: max global gradient norm; None = no clipping
    clip_norm: float | None = Field(None, gt=0)
    #: exponential moving average of the weights (torch.optim.swa_utils.AveragedModel, updated after
    #: every step: avg = decay * avg + (1 - decay) * w): validation, the best weights and the final
    #: model use the averaged weights, which smooth the step-to-step noise of small, heavily
    #: regularised models; None = off (the plain last/best weights)
    ema_decay: float | None = Field(None, gt=0, lt=1)
    #: stop after this many evaluations without improvement of the primary metric; None = never
    patience: int | None = Field(None, ge=1)
    #: evaluate on validation every this many epochs (and always after the last one)
    eval_every: int = Field(1, ge=1)
    seed: int = 0
    #: time budget for training (minutes on `budget_clock`, checked after every step; validation
    #: runs inside the loop are counted too); None = no budget
    max_minutes: float | None = Field(None, gt=0)
    #: the clock of `max_minutes`: "wall" (time.perf_counter) or "process" = this process's CPU
    #: time (time.process_time, all its threads, user + system): with one torch thread that is the
    #: uncontended wall time, so the budget does not shrink when other jobs share the cores or the
    #: process is paused (SIGSTOP). Used for fair equal-budget comparisons on shared machines.
    budget_clock: Literal["wall", "process"] = "wall"
    #: update the progress bar (loss, samples/s) every this many steps
    log_every: int = Field(20, ge=1)
    #: batch samples of similar length together (passed to the task's train_batches; both tasks
    #: support it, recsys/tasks/base.py); a speed option for padded sequences. With a per-batch mean loss it
    #: also re-weights positions; use loss.reduction "epoch_mean" to keep the objective (NextItemTask)
    bucket_by_length: bool = False


@dataclass
class FitResult:
    best_metric: float | None
    best_epoch: int | None
    epochs_run: int
    #: "completed" | "early_stopped" | "time_budget"
    stop_reason: str
    #: training time on `budget_clock` (validation included), summed over resumed segments
    seconds: float
    #: one dict per epoch (the lines of metrics.jsonl)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_weights: Path | None = None
    #: the clock of `seconds` and of the budget: "wall" | "process" (TrainConfig.budget_clock)
    budget_clock: str = "wall"


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    # fused kernels (CPU and CUDA): one pass per tensor instead of ~10 elementwise ops
    fused = cfg.fused_optimizer and all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused or None)


def make_weight_average(model: torch.nn.Module, cfg: TrainConfig) -> AveragedModel | None:
    """The EMA copy of `model` (train.ema_decay), or None. Its first update copies the weights.
    A model with torchrec-sharded modules (Ray --gpu, DistributedModelParallel) is refused: its
    shards hold process groups (no deep copy) and its embedding rows are updated inside the fused
    optimizer, so a second, averaged copy would need its own sharding plan."""
    if cfg.ema_decay is None:
        return None
    sharded = [type(m).__name__ for m in unwrap(model).modules() if type(m).__module__.startswith("torchrec.distributed")]
    if sharded:
        raise ValueError(f"train.ema_decay is not supported for torchrec-sharded models (found {sharded[0]}); "
                         "train without it or on the unsharded path")
    return AveragedModel(unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)


# ----------------------------------------------------------------------------------------------
# helpers


def budget_timer(clock: str) -> Callable[[], float]:
    """The seconds counter of a budget clock (TrainConfig.budget_clock)."""
    if clock == "wall":
        return time.perf_counter
    if clock == "process":
        return time.process_time
    raise ValueError(f"train.budget_clock must be 'wall' or 'process', got {clock!r}")


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _distributed(world_size: int) -> bool:
    return world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def _allreduce_grads(model: torch.nn.Module, world_size: int) -> None:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _broadcast_floats(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.broadcast(t, src=0)
    return t.tolist()


def _tensorboard_writer(run_dir: Path) -> Any:
    """A SummaryWriter when tensorboard is installed, else None (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """On resume, drop log lines of epochs after the checkpoint (they will be re-run)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("epoch", 0) <= last_epoch]
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


# ----------------------------------------------------------------------------------------------
# the loop


@dataclass
class LoopState:
    """What survives from one epoch to the next; saved as the checkpoint's "loop" JSON."""

    epoch: int = 0
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    bad_evals: int = 0
    #: training seconds on the budget clock of the finished epochs (all resumed segments)
    train_seconds: float = 0.0
    ema_decay: float | None = None
    primary_metric: str | None = None
    #: why training stopped ("early_stopped" | "time_budget"), None while it goes on
    stopped: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LoopState":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Loop:
    """The fixed context of one `fit` call (built once by `_start`)."""

    model: torch.nn.Module
    task: TrainTask
    cfg: TrainConfig
    device: torch.device
    rank: int
    world_size: int
    distributed: bool
    opt: torch.optim.Optimizer
    ema: AveragedModel | None
    generator: torch.Generator
    run_dir: Path
    writer: Any
    clock: Callable[[], float]
    #: clock reading at the start of the current (unsaved) stretch of training
    start: float = 0.0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def eval_model(self) -> torch.nn.Module:
        """What validation scores and "best" saves: the weight average when there is one."""
        return self.model if self.ema is None else self.ema.module

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE

    @property
    def best_path(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR / BEST_FILE

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE

    def elapsed(self, state: LoopState) -> float:
        return state.train_seconds + self.clock() - self.start


def _start(model: torch.nn.Module, task: TrainTask, cfg: TrainConfig, run_dir: Path, resume: bool, rank: int,
           world_size: int, device: str | torch.device | None) -> tuple[_Loop, LoopState, list[dict[str, Any]]]:
    """Seed, optimizer, weight average, and the resumed (or fresh) state and log."""
    if rank == 0:
        (run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    torch.manual_seed(cfg.seed + rank)  # dropout RNG; saved/restored with every checkpoint
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rank)
    opt = make_optimizer(model, cfg)
    ema = make_weight_average(model, cfg)
    loop = _Loop(model, task, cfg, device, rank, world_size, _distributed(world_size), opt, ema, generator, run_dir,
                 writer=None, clock=budget_timer(cfg.budget_clock))
    state = LoopState(ema_decay=cfg.ema_decay, primary_metric=task.primary_metric)
    if resume and loop.ckpt_path.exists():
        saved = load_checkpoint(loop.ckpt_path, model, opt, generator, ema, rank=rank)
        for key, now in (("ema_decay", cfg.ema_decay), ("primary_metric", task.primary_metric)):
            if key in saved and saved[key] != now:
                raise ValueError(f"{loop.ckpt_path}: the run was started with {key} {saved[key]!r}, now {now!r}; "
                                 "resume with the same setting or start over (resume=False)")
        state = LoopState.from_json(saved)
        log.info("resumed from %s at epoch %d", loop.ckpt_path, state.epoch)
        if loop.is_main:
            _truncate_metrics(loop.metrics_path, state.epoch)
    elif loop.is_main and loop.metrics_path.exists():
        loop.metrics_path.unlink()  # a fresh run starts a fresh log
    history: list[dict[str, Any]] = []
    if loop.metrics_path.exists():
        history = [json.loads(ln) for ln in loop.metrics_path.read_text().splitlines() if ln.strip()]
    loop.writer = _tensorboard_writer(run_dir) if loop.is_main else None
    loop.start = loop.clock()  # budget and state.train_seconds run on this clock
    return loop, state, history


def _step(loop: _Loop, batch: Batch, epoch: int, step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """One optimisation step on `batch`: loss, backward, (all-reduce), clipping, update, average."""
    loss, logs = loop.task.loss(loop.model, batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite training loss {loss.item()} at epoch {epoch} step {step}")
    loop.opt.zero_grad(set_to_none=True)
    loss.backward()
    if loop.distributed:
        _allreduce_grads(unwrap(loop.model), loop.world_size)
    if loop.cfg.clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(loop.model.parameters(), loop.cfg.clip_norm)
    loop.opt.step()
    if loop.ema is not None:
        loop.ema.update_parameters(unwrap(loop.model))
    return loss, logs


def _train_epoch(loop: _Loop, state: LoopState, epoch: int) -> tuple[dict[str, Any], bool]:
    """Train one epoch (or until the time budget runs out): the epoch's log record and whether the
    budget cut it."""
    from tqdm.auto import tqdm

    cfg = loop.cfg
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    loop.model.train()
    bar = tqdm(total=loop.task.num_train_batches(cfg.batch_size), desc=f"epoch {epoch}/{cfg.epochs}",
               disable=not loop.is_main, leave=False, mininterval=1.0)
    epoch_start = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64)
    extra_sums: dict[str, float] = {}
    n_steps = n_samples = window_samples = 0
    window_start = time.perf_counter()
    out_of_time = False
    for batch in loop.task.train_batches(epoch, cfg.batch_size, loop.generator, bucket_by_length=cfg.bucket_by_length):
        batch = _to_device(batch, loop.device)
        loss, logs = _step(loop, batch, epoch, n_steps)
        bsz = int(next(iter(batch.values())).shape[0])
        loss_sum += loss.detach().double().cpu()
        for k, v in logs.items():
            extra_sums[k] = extra_sums.get(k, 0.0) + float(v)
        n_steps += 1
        n_samples += bsz
        window_samples += bsz
        state.global_step += 1
        bar.update(1)
        if n_steps % cfg.log_every == 0:
            now = time.perf_counter()
            bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{window_samples / max(now - window_start, 1e-9):.0f}")
            if loop.writer is not None:
                loop.writer.add_scalar("train/loss", loss.item(), state.global_step)
            window_samples, window_start = 0, now
        over = loop.elapsed(state) > budget_s
        if loop.distributed:
            over = bool(_broadcast_floats([float(over)], loop.device)[0])
        if over:
            out_of_time = True
            break
    bar.close()
    epoch_seconds = time.perf_counter() - epoch_start
    record: dict[str, Any] = {
        "epoch": epoch,
        "global_step": state.global_step,
        "train/loss": float(loss_sum) / max(n_steps, 1),
        **{f"train/{k}": v / max(n_steps, 1) for k, v in extra_sums.items()},
        "train/samples": n_samples,
        "train/seconds": epoch_seconds,
        "train/samples_per_s": n_samples / max(epoch_seconds, 1e-9),
        "partial_epoch": out_of_time,
        "train/budget_clock": cfg.budget_clock,
        "train/budget_seconds": loop.elapsed(state),  # used so far, this clock
    }
    return record, out_of_time


def _validate(loop: _Loop, state: LoopState, epoch: int, record: dict[str, Any]) -> None:
    """Validation metrics into `record`; the best weights (by the primary metric) saved; early stop."""
    primary = loop.task.primary_metric
    loop.model.eval()
    loop.eval_model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        metrics = loop.task.evaluate(loop.eval_model, "valid")
    if primary not in metrics:
        raise KeyError(f"task.evaluate returned no primary metric {primary!r}; got {sorted(metrics)}")
    record.update({f"valid/{k}": float(v) for k, v in metrics.items()})
    record["valid/seconds"] = time.perf_counter() - t0
    value = float(metrics[primary])
    if loop.distributed:
        value = _broadcast_floats([value], loop.device)[0]
    if state.best_metric is None or value > state.best_metric:
        state.best_metric, state.best_epoch, state.bad_evals = value, epoch, 0
        if loop.is_main:
            atomic_save(unwrap(loop.eval_model).state_dict(), loop.best_path, metadata={"epoch": str(epoch)})
    else:
        state.bad_evals += 1
    if loop.writer is not None:
        for k, v in record.items():
            if isinstance(v, (int, float)) and k.startswith("valid/"):
                loop.writer.add_scalar(k, v, epoch)
    if loop.cfg.patience is not None and state.bad_evals >= loop.cfg.patience:
        state.stopped = "early_stopped"


def _end_epoch(loop: _Loop, state: LoopState, epoch: int, record: dict[str, Any],
               on_epoch_end: Callable[[int, Path], None] | None) -> None:
    """After a full epoch: the training seconds so far, the checkpoint (rank 0), then the hook."""
    state.epoch = epoch
    state.train_seconds += loop.clock() - loop.start
    loop.start = loop.clock()
    rng = gather_rng_states(loop.generator, loop.world_size if loop.distributed else 1, loop.device)  # every rank calls it
    if loop.is_main:
        save_checkpoint(loop.ckpt_path, loop.model, loop.opt, rng, state.to_json(), loop.ema)
    if on_epoch_end is not None:
        on_epoch_end(epoch, loop.ckpt_path)
    if loop.is_main:
        primary = loop.task.primary_metric
        log.info("epoch %d: loss %.4f, %s %s", epoch, record["train/loss"], primary, record.get(f"valid/{primary}"))


def _finish(loop: _Loop, state: LoopState, history: list[dict[str, Any]], restore_best: bool) -> FitResult:
    """Close the log writer, put the best (or averaged) weights into the model, summarise."""
    if loop.writer is not None:
        loop.writer.close()
    if loop.distributed:
        torch.distributed.barrier()
    if restore_best and loop.best_path.exists():
        from safetensors.torch import load_file

        unwrap(loop.model).load_state_dict(load_file(str(loop.best_path), device=str(loop.device)))
    elif loop.ema is not None:  # the final model is the averaged one
        unwrap(loop.model).load_state_dict(loop.ema.module.state_dict())
    return FitResult(
        best_metric=state.best_metric,
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        stop_reason=state.stopped or "completed",
        seconds=loop.elapsed(state),
        history=history,
        best_weights=loop.best_path if loop.best_path.exists() else None,
        budget_clock=loop.cfg.budget_clock,
    )


def fit(
    model: torch.nn.Module,
    task: TrainTask,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = True,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device | None = None,
    restore_best: bool = True,
    on_epoch_end: Callable[[int, Path], None] | None = None,
) -> FitResult:
    """Train `model` on `task` for `cfg.epochs` epochs (or until early stopping / time budget).

    Validation runs every `cfg.eval_every` epochs and after the last one; the task's
    `primary_metric` (higher is better) selects the best weights (checkpoints/best.safetensors)
    and drives early stopping. With `restore_best` the model ends holding the best weights.
    With `resume` and an existing checkpoint in `run_dir`, training continues after its epoch.
    With `cfg.ema_decay`, an exponential moving average of the weights is kept (and checkpointed):
    validation scores it, best.safetensors holds it, and the returned model is the averaged one
    (the best average with `restore_best`, else the last average).
    `on_epoch_end(epoch, checkpoint_path)` is called on EVERY rank after each full epoch (e.g. a Ray
    Train worker's `ray.train.report`, which every worker must call); on rank 0 the epoch's checkpoint
    is already written (other ranks have no barrier with it: only rank 0 should read the file). Not
    called after a partial epoch cut by the time budget (it is not checkpointed).
    """
    loop, state, history = _start(model, task, cfg, Path(run_dir), resume, rank, world_size, device)
    while state.epoch < cfg.epochs and state.stopped is None:
        epoch = state.epoch + 1
        record, out_of_time = _train_epoch(loop, state, epoch)
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs or out_of_time:
            _validate(loop, state, epoch, record)
        if out_of_time:
            state.stopped = "time_budget"
        record["best/" + task.primary_metric] = state.best_metric
        record["best/epoch"] = state.best_epoch
        history.append(record)
        if loop.is_main:
            with loop.metrics_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
        if out_of_time:
            # a partial epoch is not checkpointed: a resume re-runs it from the last full epoch
            log.info("time budget of %.1f min reached in epoch %d", cfg.max_minutes, epoch)
            break
        _end_epoch(loop, state, epoch, record, on_epoch_end)
    return _finish(loop, state, history, restore_best)
