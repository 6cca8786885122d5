"""Tasks on the partitioned build layout: in-process training on P hash parts is bitwise the same as
on the single-file layout of before (same losses, metrics and weights), and 2 gloo workers that
each read only their parts evaluate a fixed model to the unsharded metrics (tolerance 1e-12: only
the float64 summation order of the metric sums differs) with the same global statistics, and a
restarted worker reads the same data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from recsys.data.synth import SynthConfig, generate
from tests.recsys.tasks.shards import repartition, run_ranks

SAS = {"name": "sasrec", "dim": 16, "num_blocks": 1, "dropout": 0.1, "max_len": 20}
DIN = {"name": "din", "item_dim": 8, "cat_dim": 4, "pos_dim": 4, "attention_hidden": 16, "head_hidden": [16]}
TOL = 1e-12


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One planted build as the old single-file layout (1 part) and as 4 hash parts (same rows)."""
    root = tmp_path_factory.mktemp("sharded")
    generate(SynthConfig(num_users=48, num_categories=10, items_per_cluster=30, length_median=150, min_length=140,
                         max_length=300, deep_offset=100, seed=3), root / "synth")
    return {"one": repartition(root / "synth", root / "one", 1), "four": repartition(root / "synth", root / "four", 4)}


def _cfg(build: Path, out: Path, task: str, model: dict[str, Any], **eval_cfg: Any) -> Any:
    from recsys.experiment import parse_experiment

    return parse_experiment({"name": f"{task}-{build.name}", "task": task, "data": {"build_dir": str(build)},
                             "model": model, "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "log_every": 1},
                             "seed": 0, "output_dir": str(out), "eval": eval_cfg})


def _fit(cfg: Any, rank: int = 0, world: int = 1) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    from recsys.experiment import build_model, build_task
    from recsys.train import fit

    task = build_task(cfg, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    result = fit(model, task, cfg.train_cfg(), cfg.run_dir, resume=False)
    drop = ("seconds", "samples_per_s", "budget_seconds")
    history = [{k: v for k, v in r.items() if not k.endswith(drop)} for r in result.history]
    return history, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("task,model", [("next_item", SAS), ("ctr", DIN)])
def test_partitioned_layout_trains_bitwise_like_single_file(builds: dict[str, Path], tmp_path: Path,
                                                            task: str, model: dict[str, Any]) -> None:
    """In-process (--workers 0) training reads all parts, in the single file's row order."""
    one_log, one_w = _fit(_cfg(builds["one"], tmp_path, task, model, valid_max_users=30))
    four_log, four_w = _fit(_cfg(builds["four"], tmp_path, task, model, valid_max_users=30))
    assert one_log == four_log and len(one_log) == 2  # losses and validation metrics, bitwise
    assert one_log[1]["train/loss"] < one_log[0]["train/loss"]
    assert one_w.keys() == four_w.keys() and all(torch.equal(one_w[k], four_w[k]) for k in one_w)


def _rank_view(rank: int, world: int, cfg_json: str) -> dict[str, Any]:
    """What rank `rank` of `world` sees: its users, global statistics and the metrics of a fixed
    (seed 0) model; the task is built twice, as a restarted worker does."""
    from recsys.experiment import build_model, build_task, parse_experiment

    cfg = parse_experiment(json.loads(cfg_json))
    task = build_task(cfg, rank=rank, world_size=world)
    again = build_task(cfg, rank=rank, world_size=world)  # a restarted worker
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batches = [list(t.train_batches(1, 8, torch.Generator().manual_seed(7))) for t in (task, again)]
    out = {"parts": task.parts, "users": task.sequences.user_ids.copy(), "again_parts": again.parts,
           "same_batches": len(batches[0]) == len(batches[1]) and all(
               all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(*batches)),
           "valid": task.evaluate(model, "valid"), "test": task.evaluate(model, "test")}
    if cfg.task == "next_item":
        out.update(item_counts=task.item_counts, mean_positions=task.mean_positions,
                   valid_users=task.sequences.user_ids[task.valid_rows], train_users=task.sequences.user_ids[task.train_rows])
    else:
        out.update(train_users=task.train.user_ids, train_items=task.train.items)
    return out


@pytest.mark.parametrize("task,model", [("next_item", SAS), ("ctr", DIN)])
def test_two_workers_read_their_parts_and_evaluate_like_one(builds: dict[str, Path], tmp_path: Path,
                                                            task: str, model: dict[str, Any]) -> None:
    from recsys.experiment import build_model, build_task

    cfg = _cfg(builds["four"], tmp_path, task, model, valid_max_users=30)
    ranks = run_ranks(_rank_view, json.dumps(cfg.model_dump(mode="json")))
    full = build_task(cfg)
    torch.manual_seed(0)
    model_1 = build_model(cfg).eval()
    assert [r["parts"] for r in ranks] == [[0, 2], [1, 3]] == [r["again_parts"] for r in ranks]
    assert all(r["same_batches"] for r in ranks)  # a restarted worker replays the same data
    users = [set(r["users"].tolist()) for r in ranks]
    assert not users[0] & users[1] and users[0] | users[1] == set(full.sequences.user_ids.tolist())
    assert all(set(r["train_users"].tolist()) <= u for r, u in zip(ranks, users))
    if task == "next_item":
        assert sorted(np.concatenate([r["train_users"] for r in ranks]).tolist()) == \
            sorted(full.sequences.user_ids[full.train_rows].tolist())
        valid = np.sort(np.concatenate([r["valid_users"] for r in ranks]))
        assert valid.size == 30 and np.array_equal(valid, full.sequences.user_ids[full.valid_rows])  # same sample
        assert all(np.array_equal(r["item_counts"], full.item_counts) for r in ranks)
        assert all(r["mean_positions"] == full.mean_positions for r in ranks)
    else:
        assert sum(r["train_users"].size for r in ranks) == len(full.train)
    for split in ("valid", "test"):
        want = full.evaluate(model_1, split)
        for r in ranks:  # every rank returns the metrics of all users
            assert r[split].keys() == want.keys()
            assert all(abs(r[split][k] - want[k]) <= TOL for k in want), (split, r[split], want)


def test_more_workers_than_parts_is_an_error_naming_the_fix(builds: dict[str, Path]) -> None:
    from recsys.tasks.ctr import CTRTask

    with pytest.raises(ValueError, match="1 parts for 2 workers.*rebuild with at least 2 parts"):
        CTRTask(builds["one"], rank=0, world_size=2)
