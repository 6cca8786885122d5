"""The generic loop on a tiny task of its own (a noisy linear classification problem with a
dropout MLP, so the dropout RNG matters for exact resume)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

from recsys.tasks.base import Batch, TrainTask
from recsys.train import FitResult, TrainConfig, fit


class ToyTask:
    primary_metric = "acc"

    def __init__(self, n: int = 512, d: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(d, generator=g)
        self.x = torch.randn(n, d, generator=g)
        self.y = (self.x @ w + 0.3 * torch.randn(n, generator=g) > 0).float()
        self.xv = torch.randn(256, d, generator=g)
        self.yv = (self.xv @ w > 0).float()

    def num_train_batches(self, batch_size: int) -> int:
        return -(-len(self.x) // batch_size)

    def train_batches(self, epoch: int, batch_size: int, generator: torch.Generator,
                      bucket_by_length: bool = False) -> Iterator[Batch]:
        perm = torch.randperm(len(self.x), generator=generator)
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            yield {"x": self.x[idx], "y": self.y[idx]}

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["x"]).squeeze(-1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["y"]), {}

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        pred = model(self.xv).squeeze(-1) > 0
        return {"acc": float((pred == self.yv.bool()).float().mean())}

    def metric_names(self) -> list[str]:
        return ["acc"]


def make_model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 32, "lr": 1e-2, "clip_norm": 1.0, "seed": 3, **kw})


def test_toy_task_satisfies_protocol() -> None:
    assert isinstance(ToyTask(), TrainTask)


def test_fit_learns_and_logs(tmp_path: Path) -> None:
    model = make_model()
    before = ToyTask().evaluate(model.eval(), "valid")["acc"]
    res = fit(model, ToyTask(), cfg(epochs=3), tmp_path)
    assert isinstance(res, FitResult)
    assert res.epochs_run == 3 and res.stop_reason == "completed"
    assert res.best_metric is not None and res.best_metric > max(before, 0.8)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert all("valid/acc" in r and r["train/samples"] == 512 for r in lines)
    assert (tmp_path / "checkpoints" / "best.safetensors").exists()


def test_resume_after_kill_is_identical(tmp_path: Path) -> None:
    full = make_model()
    fit(full, ToyTask(), cfg(), tmp_path / "a", restore_best=False)

    part = make_model()
    fit(part, ToyTask(), cfg(epochs=1), tmp_path / "b", restore_best=False)  # "killed" after epoch 1
    resumed = make_model()  # a fresh process: new model object, weights from the checkpoint
    res = fit(resumed, ToyTask(), cfg(), tmp_path / "b", restore_best=False)
    assert res.epochs_run == 2
    for (name, p), (_, q) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(p, q), name
    # and the resumed run does not simply replay without training: epoch 2 changed the weights
    assert not all(torch.equal(p, q) for p, q in zip(part.state_dict().values(), resumed.state_dict().values()))
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]


def test_no_resume_starts_over(tmp_path: Path) -> None:
    fit(make_model(), ToyTask(), cfg(epochs=1), tmp_path)
    res = fit(make_model(), ToyTask(), cfg(epochs=1), tmp_path, resume=False)
    assert res.epochs_run == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


class FlatTask(ToyTask):
    """Validation metric that never improves after the first evaluation."""

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        return {"acc": 0.5}


def test_early_stopping(tmp_path: Path) -> None:
    res = fit(make_model(), FlatTask(), cfg(epochs=10, patience=2), tmp_path)
    assert res.stop_reason == "early_stopped"
    assert res.epochs_run == 3 and res.best_epoch == 1


def test_time_budget_stops(tmp_path: Path) -> None:
    res = fit(make_model(), ToyTask(), cfg(epochs=50, max_minutes=1e-6), tmp_path)
    assert res.stop_reason == "time_budget"
    assert res.epochs_run == 0 and len(res.history) == 1 and res.history[0]["partial_epoch"]


class SleepyTask(ToyTask):
    """Every step waits 40 ms without using the CPU (like a process that is paused or waits for a
    core another job holds): wall time passes, process time does not."""

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        time.sleep(0.04)
        return super().loss(model, batch)


class BusyTask(ToyTask):
    """Every step burns 40 ms of this process's CPU time."""

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        t0 = time.process_time()
        while time.process_time() - t0 < 0.04:
            pass
        return super().loss(model, batch)


def test_budget_clock_process_ignores_waiting(tmp_path: Path) -> None:
    """0.5 s budget, 16 steps of 40 ms per epoch: waiting exhausts it on the wall clock only;
    burning CPU exhausts it on the process clock."""
    budget = 0.5 / 60
    wall = fit(make_model(), SleepyTask(), cfg(epochs=2, max_minutes=budget), tmp_path / "wall")
    assert wall.stop_reason == "time_budget" and wall.budget_clock == "wall"
    proc = fit(make_model(), SleepyTask(), cfg(epochs=2, max_minutes=budget, budget_clock="process"), tmp_path / "p")
    assert proc.stop_reason == "completed" and proc.epochs_run == 2 and proc.budget_clock == "process"
    assert proc.seconds < 0.5  # CPU seconds, although > 1.2 s of wall time passed
    lines = [json.loads(x) for x in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/budget_clock"] for r in lines] == ["process", "process"]
    busy = fit(make_model(), BusyTask(), cfg(epochs=2, max_minutes=budget, budget_clock="process"), tmp_path / "b")
    assert busy.stop_reason == "time_budget" and busy.epochs_run == 0 and busy.seconds >= 0.5


def test_budget_clock_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="budget_clock"):
        TrainConfig(budget_clock="cpu")


def test_restore_best_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model = make_model()
    res = fit(model, ToyTask(), cfg(epochs=3), tmp_path)
    best = load_file(str(res.best_weights))
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k])


def test_missing_primary_metric_is_named(tmp_path: Path) -> None:
    class Bad(ToyTask):
        def evaluate(self, model, split):
            return {"accuracy": 1.0}

    with pytest.raises(KeyError, match="primary metric 'acc'"):
        fit(make_model(), Bad(), cfg(epochs=1), tmp_path)


def test_config_rejects_unknown_and_bad_values() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="optimizer"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValidationError, match="epoch"):
        TrainConfig(epoch=3)


def test_weight_average_is_what_is_validated_kept_and_returned(tmp_path: Path) -> None:
    """train.ema_decay: after every step avg = d*avg + (1-d)*w (first step: a copy); validation
    scores the average, and with restore_best=False the returned model holds it."""
    decay = 0.9
    task = ToyTask()
    plain = make_model()
    trajectory: list[dict[str, torch.Tensor]] = []

    class Recording(ToyTask):  # the same data; records the weights after every optimiser step
        def loss(self, model, batch):
            if model.training:
                trajectory.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            return super().loss(model, batch)

    fit(plain, Recording(), cfg(epochs=1), tmp_path / "plain", restore_best=False)
    trajectory = trajectory[1:] + [{k: v.detach().clone() for k, v in plain.state_dict().items()}]
    expected = {k: v.clone() for k, v in trajectory[0].items()}
    for w in trajectory[1:]:
        for k in expected:
            expected[k].mul_(decay).add_(w[k], alpha=1 - decay)
    averaged = make_model()
    res = fit(averaged, task, cfg(epochs=1, ema_decay=decay), tmp_path / "ema", restore_best=False)
    for k, v in averaged.state_dict().items():
        assert torch.allclose(v, expected[k], atol=1e-6), k
    assert not all(torch.allclose(v, plain.state_dict()[k]) for k, v in averaged.state_dict().items())
    assert res.history[0]["valid/acc"] == pytest.approx(task.evaluate(averaged.eval(), "valid")["acc"])
    # restore_best: best.safetensors holds the average of the best epoch (here the only one), and so
    # does the returned model
    from safetensors.torch import load_file

    kept = make_model()
    res = fit(kept, task, cfg(epochs=1, ema_decay=decay), tmp_path / "best", restore_best=True)
    best = load_file(str(res.best_weights))
    for k, v in kept.state_dict().items():
        assert torch.allclose(v, expected[k], atol=1e-6) and torch.equal(v, best[k]), k


def test_resume_with_weight_average_is_identical(tmp_path: Path) -> None:
    full = make_model()
    fit(full, ToyTask(), cfg(ema_decay=0.8), tmp_path / "a", restore_best=False)
    fit(make_model(), ToyTask(), cfg(epochs=1, ema_decay=0.8), tmp_path / "b", restore_best=False)
    resumed = make_model()
    fit(resumed, ToyTask(), cfg(ema_decay=0.8), tmp_path / "b", restore_best=False)
    for (name, p), (_, q) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(p, q), name
    fit(make_model(), ToyTask(), cfg(epochs=1), tmp_path / "c", restore_best=False)
    with pytest.raises(ValueError, match="no weight average"):
        fit(make_model(), ToyTask(), cfg(ema_decay=0.8), tmp_path / "c", restore_best=False)
    # a run started with an average is not silently resumed without it, nor with another decay
    fit(make_model(), ToyTask(), cfg(epochs=1, ema_decay=0.8), tmp_path / "d", restore_best=False)
    for other in (None, 0.9):
        with pytest.raises(ValueError, match="ema_decay 0.8"):
            fit(make_model(), ToyTask(), cfg(ema_decay=other), tmp_path / "d", restore_best=False)


def test_resume_refuses_another_selection_metric(tmp_path: Path) -> None:
    fit(make_model(), ToyTask(), cfg(epochs=1), tmp_path, restore_best=False)

    class OtherMetric(ToyTask):
        primary_metric = "acc2"

        def evaluate(self, model, split):
            return {**super().evaluate(model, split), "acc2": 0.0}

    with pytest.raises(ValueError, match="primary_metric 'acc'"):
        fit(make_model(), OtherMetric(), cfg(), tmp_path, restore_best=False)


def test_weight_average_refuses_torchrec_sharded_models(tmp_path: Path) -> None:
    class ShardedStandIn(torch.nn.Linear):  # stands for a torchrec.distributed sharded module
        pass

    ShardedStandIn.__module__ = "torchrec.distributed.embedding"
    model = torch.nn.Sequential(ShardedStandIn(8, 1))
    with pytest.raises(ValueError, match="torchrec-sharded.*ShardedStandIn"):
        fit(model, ToyTask(), cfg(epochs=1, ema_decay=0.9), tmp_path)


def test_fit_is_the_plain_adam_loop(tmp_path: Path) -> None:
    """With torch's default Adam (fused_optimizer False), fit's weights are bitwise those of a
    hand-written loop over the same batches (what benchmarks trained before they used fit); the
    fused kernels agree up to rounding."""

    def fresh() -> torch.nn.Module:
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    task = ToyTask()
    plain = fresh()
    opt = torch.optim.Adam(plain.parameters(), lr=1e-2, betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(3 * 1_000_003)  # fit's generator for seed 3, rank 0
    for epoch in (1, 2):
        for batch in task.train_batches(epoch, 32, gen):
            loss, _ = task.loss(plain, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    kw = {"epochs": 2, "batch_size": 32, "lr": 1e-2, "betas": (0.9, 0.999), "seed": 3}
    for fused, exact in ((False, True), (True, False)):
        model = fresh()
        fit(model, task, TrainConfig(fused_optimizer=fused, **kw), tmp_path / f"f{fused}", restore_best=False)
        for a, b in zip(model.parameters(), plain.parameters()):
            if exact:
                assert torch.equal(a, b)
            else:
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


class RecordingTask(ToyTask):
    """ToyTask that records the sample order of every epoch it trains."""

    def __init__(self) -> None:
        super().__init__()
        self.orders: list[torch.Tensor] = []

    def train_batches(self, epoch: int, batch_size: int, generator: torch.Generator,
                      bucket_by_length: bool = False) -> Iterator[Batch]:
        perm = torch.randperm(len(self.x), generator=generator)
        self.orders.append(perm)
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            yield {"x": self.x[idx], "y": self.y[idx]}


def _two_rank_resume(rank: int, world: int, root: str) -> dict[str, object]:
    """On each of `world` gloo ranks: an uninterrupted 2-epoch run, then a run killed after epoch 1
    and resumed (fresh model, task and generator); the orders each saw and the final weights."""
    runs = {}
    for name, epochs, run_dir in (("full", 2, "a"), ("part", 1, "b"), ("resumed", 2, "b")):
        task, model = RecordingTask(), make_model()
        fit(model, task, cfg(epochs=epochs), Path(root) / run_dir, rank=rank, world_size=world, restore_best=False)
        runs[name] = {"orders": task.orders, "weights": model.state_dict()}
    return runs


def test_resume_with_two_ranks_restores_each_ranks_random_state(tmp_path: Path) -> None:
    from tests.recsys.tasks.shards import run_ranks

    ranks = run_ranks(_two_rank_resume, str(tmp_path))
    full, resumed = ranks[1]["full"], ranks[1]["resumed"]
    assert len(resumed["orders"]) == 1  # rank 1 re-ran epoch 2 only ...
    assert torch.equal(resumed["orders"][0], full["orders"][1])  # ... in the uninterrupted order
    assert not torch.equal(ranks[0]["full"]["orders"][1], full["orders"][1])  # (ranks draw differently)
    for r in range(2):  # and every rank ends with the uninterrupted weights (rank 1's dropout included)
        for name, p in ranks[r]["full"]["weights"].items():
            assert torch.equal(p, ranks[r]["resumed"]["weights"][name]), (r, name)


def test_resume_names_a_rank_the_checkpoint_lacks(tmp_path: Path) -> None:
    from recsys.checkpoints import load_checkpoint
    from recsys.train import make_optimizer

    fit(make_model(), ToyTask(), cfg(epochs=1), tmp_path)  # one worker: rank 0's state only
    model = make_model()
    with pytest.raises(ValueError, match="no random state for rank 1"):
        load_checkpoint(tmp_path / "checkpoints" / "checkpoint.safetensors", model, make_optimizer(model, cfg()),
                        torch.Generator(), rank=1)
