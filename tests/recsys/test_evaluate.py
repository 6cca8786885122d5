"""recsys/evaluate.py: the popularity baseline ranks by train frequency, evaluate_run reproduces
eval.json, and every printed line names protocol, split and dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.eval.protocol import dataset_name
from recsys.evaluate import PopularityModel, evaluate_run, format_metrics, popularity_metrics
from recsys.tasks.next_item import NextItemTask
from tests.recsys.tasks.test_next_item import markov_sequences, write_build


def test_popularity_model_scores_are_train_counts(tmp_path: Path) -> None:
    build = write_build(tmp_path / "b", [[1, 2, 2, 3, 4], [2, 3, 1], [4, 4, 4, 2, 1]], num_items=5)
    task = NextItemTask(build, max_len=4)
    # train parts: [1,2,2], [2], [4,4,4] -> counts 1:1, 2:3, 3:0, 4:3, 5:0
    assert task.item_counts.tolist() == [0, 1, 3, 0, 3, 0]
    model = PopularityModel(task.item_counts)
    s = (model.user_embedding(torch.zeros(1, 4, dtype=torch.long)) @ model.item_embeddings().T)[0]
    assert s.tolist() == [0, 1, 3, 0, 3, 0]
    m = popularity_metrics(task, "test")
    # test targets 4 (hist 1,2,2,3 masked -> candidates 4:3, 5:0 -> rank 0),
    # 1 (hist 2,3 masked -> 1:1 vs 4:3 -> rank 1), 1 (hist 4,4,4,2 masked -> 1:1 vs 3:0,5:0 -> rank 0)
    assert m["full/hr@5"] == 1.0
    assert m["full/mrr@5"] == pytest.approx((1 + 0.5 + 1) / 3)


def test_evaluate_run_reproduces_eval_json_and_formats(tmp_path: Path) -> None:
    from recsys.experiment import parse_experiment, run_experiment

    build = write_build(tmp_path / "build", markov_sequences(), num_items=40)
    cfg = parse_experiment({
        "name": "e", "task": "next_item", "data": {"build_dir": str(build)},
        "model": {"name": "mqsa_ted", "dim": 16, "max_len": 8, "dropout": 0.1},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.01}, "loss": {"kind": "ce"},
        "output_dir": str(tmp_path / "runs"), "seed": 1,
    })
    run_dir = run_experiment(cfg)
    saved = json.loads((run_dir / "eval.json").read_text())
    again = evaluate_run(run_dir)
    for k, v in again.items():
        if isinstance(v, float):
            assert v == pytest.approx(saved[k], abs=1e-6), k
    text = format_metrics(again)
    lines = text.splitlines()
    assert len(lines) == 2 * 2 * 9  # splits x protocols x (3 metrics x 3 ks)
    assert again["dataset"] == dataset_name(build) and again["dataset"] != "build"
    assert all("split " in ln and f"dataset {again['dataset']}" in ln
               and ("full ranking" in ln or "persisted negatives" in ln) for ln in lines)
    assert np.isfinite([saved["test/full/ndcg@10"]]).all()


def test_dataset_name_is_the_builds_own_name(tmp_path: Path) -> None:
    """The printed dataset is the build's manifest name (or a synth description), not "build"."""
    build = tmp_path / "movielens-small" / "build"
    build.mkdir(parents=True)
    assert dataset_name(build) == "movielens-small"  # no manifest: the folder above "build"
    (build / "manifest.json").write_text(json.dumps({"name": "ml-latest-small"}))
    assert dataset_name(build) == "ml-latest-small"
    (build / "manifest.json").write_text(json.dumps({"source": "synth", "counts": {"users": 7}, "config_hash": "ab"}))
    assert dataset_name(build) == "planted synth (7 users, config ab)"


def test_ctr_evaluate_prints_full_protocol(tmp_path: Path) -> None:
    """`recsys evaluate` on a CTR run: every line names the CTR protocol (with the history cap),
    the split and the dataset."""
    from recsys.data.synth import SynthConfig, generate
    from recsys.experiment import parse_experiment, run_experiment

    build = tmp_path / "planted" / "build"
    generate(SynthConfig(num_users=40, num_categories=10, items_per_cluster=10, length_median=40, min_length=30,
                         max_length=60, deep_offset=5, drift_window=5, chunk_users=40), build)
    cfg = parse_experiment({
        "name": "c", "task": "ctr", "data": {"build_dir": str(build)},
        "model": {"name": "sdim", "item_dim": 4, "cat_dim": 4}, "ctr": {"max_history": 30},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.01}, "output_dir": str(tmp_path / "runs"), "seed": 0,
    })
    run_dir = run_experiment(cfg)
    result = evaluate_run(run_dir)
    lines = format_metrics(result).splitlines()
    assert len(lines) == 2 * 3  # splits x (auc, gauc, logloss)
    assert result["dataset"].startswith("planted synth (40 users")
    assert all("[ctr: CTR impressions" in ln and "30 most recent" in ln and f"dataset {result['dataset']}" in ln
               for ln in lines), lines
    assert "ctr:\n  max_history: 30" in (run_dir / "config.yaml").read_text()
