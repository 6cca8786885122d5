"""Experiments end to end: config validation, run directory contents, load_run without pickle,
`recsys evaluate` / `recsys recommend`; and a short real-data run (300 users of the SASRec
paper's Games data) that must beat the popularity baseline on full-ranking NDCG@10."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.config import ConfigError
from recsys.experiment import ExperimentConfig, load_run, parse_experiment, run_experiment
from tests.recsys.tasks.test_next_item import markov_sequences, write_build


def _cfg(build: Path, out: Path, **over) -> ExperimentConfig:
    data = {
        "name": "tiny",
        "task": "next_item",
        "data": {"build_dir": str(build)},
        "model": {"name": "sasrec", "dim": 16, "num_blocks": 1, "max_len": 8, "dropout": 0.1},
        "train": {"epochs": 3, "batch_size": 16, "lr": 0.01},
        "loss": {"kind": "bce"},
        "output_dir": str(out),
        "seed": 0,
    }
    data.update(over)
    return parse_experiment(data)


@pytest.fixture()
def build(tmp_path: Path) -> Path:
    return write_build(tmp_path / "build", markov_sequences(), num_items=40)


def test_config_errors_name_the_field(build: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model"):
        _cfg(build, tmp_path, model={"name": "sasrec", "dimm": 3})
    with pytest.raises(ConfigError, match="model"):
        _cfg(build, tmp_path, model={"name": "nope"})
    with pytest.raises(ConfigError, match="task"):
        _cfg(build, tmp_path, task="ranking")
    with pytest.raises(ConfigError, match="train.lr"):
        _cfg(build, tmp_path, train={"lr": -1})


def test_model_task_mismatch(build: Path, tmp_path: Path) -> None:
    """A model of the other task is refused when the experiment is read, before any data is loaded."""
    with pytest.raises(ConfigError, match="next_item model but task is 'ctr'"):
        _cfg(build, tmp_path, task="ctr")


def test_model_config_is_typed(build: Path, tmp_path: Path) -> None:
    """`model` is the model's own pydantic config (discriminated on name), not a mapping."""
    from recsys.models.sasrec import SASRecConfig

    from recsys.experiment import build_task
    from recsys.tasks.base import TrainTask

    cfg = _cfg(build, tmp_path)
    assert isinstance(cfg.model, SASRecConfig) and cfg.model.dim == 16 and cfg.model.name == "sasrec"
    assert cfg.ctr is None and cfg.history_cap() == 8
    assert isinstance(build_task(cfg), TrainTask)


def test_ctr_section_history_cap(build: Path, tmp_path: Path) -> None:
    """CTR experiments get a typed `ctr:` section (default cap 2000, recorded in the run's config);
    a DARE/TWIN/DIN max_position below the cap is refused, and next-item runs take no ctr section."""
    dare = {"name": "dare", "max_position": 500}
    with pytest.raises(ConfigError, match="max_position.*500.*max_history 2000"):
        _cfg(build, tmp_path, task="ctr", model=dare)
    cfg = _cfg(build, tmp_path, task="ctr", model=dare, ctr={"max_history": 500})
    assert cfg.ctr.max_history == 500 and cfg.history_cap() == 500
    assert _cfg(build, tmp_path, task="ctr", model={"name": "sdim"}).ctr.max_history == 2000
    with pytest.raises(ConfigError, match="ctr"):
        _cfg(build, tmp_path, ctr={"max_history": 100})
    with pytest.raises(ConfigError, match="ctr.max_history"):
        _cfg(build, tmp_path, task="ctr", model={"name": "sdim"}, ctr={"max_history": 0})


def test_bucketing_with_batch_mean_loss_warns(build: Path, tmp_path: Path, caplog) -> None:
    """Length bucketing + a per-batch mean re-weights positions: the experiment says so and names
    the fix; with reduction epoch_mean (or without bucketing) it stays quiet."""
    from recsys.experiment import build_task

    train = {"epochs": 1, "batch_size": 16, "lr": 0.01, "bucket_by_length": True}
    with caplog.at_level("WARNING", logger="recsys.experiment"):
        build_task(_cfg(build, tmp_path, train=train))
    assert "epoch_mean" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="recsys.experiment"):
        build_task(_cfg(build, tmp_path, train=train, loss={"kind": "bce", "reduction": "epoch_mean"}))
        build_task(_cfg(build, tmp_path))
    assert "epoch_mean" not in caplog.text


def test_select_metric_is_the_runs_selection_metric(build: Path, tmp_path: Path) -> None:
    """eval.select_metric becomes the task's primary metric (what `fit` selects the best weights and
    early-stops on, tests/recsys/test_train.py) for the whole run; an unknown name is refused before
    training."""
    from recsys.experiment import build_task

    with pytest.raises(ValueError, match="eval.select_metric.*sampled100/ndcg@10"):
        build_task(_cfg(build, tmp_path, eval={"select_metric": "sampled100/ndcg@11"}))
    with pytest.raises(ValueError, match="eval.select_metric.*num_users"):
        build_task(_cfg(build, tmp_path, eval={"select_metric": "num_users"}))
    assert build_task(_cfg(build, tmp_path)).primary_metric == "full/ndcg@10"
    cfg = _cfg(build, tmp_path / "runs", train={"epochs": 2, "batch_size": 16, "lr": 0.01},
               eval={"select_metric": "sampled100/mrr@5"})
    assert build_task(cfg).primary_metric == "sampled100/mrr@5"
    run_dir = run_experiment(cfg)
    log = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["fit"]["best_valid_sampled100/mrr@5"] == pytest.approx(max(r["valid/sampled100/mrr@5"] for r in log))
    assert "best_valid_full/ndcg@10" not in ev["fit"]


def test_run_directory_and_reload(build: Path, tmp_path: Path, capsys) -> None:
    from recsys import artifacts
    from recsys.cli import main

    run_dir = run_experiment(_cfg(build, tmp_path / "runs"))
    for f in ("weights.safetensors", "config.yaml", "vocab/items.parquet", "metrics.jsonl", "eval.json",
              "index.faiss", "manifest.json"):
        assert (run_dir / f).is_file(), f
    assert not (run_dir / "checkpoints").exists()
    artifacts.verify_manifest(run_dir)
    ev = json.loads((run_dir / "eval.json").read_text())
    assert {"valid/full/ndcg@10", "test/full/ndcg@10", "test/sampled100/hr@10", "test/full/mrr@20"} <= set(ev)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3

    run = load_run(run_dir)
    from recsys.experiment import build_task

    again = build_task(run.config).evaluate(run.model, "test")
    assert again["full/ndcg@10"] == pytest.approx(ev["test/full/ndcg@10"], abs=1e-6)

    assert main(["evaluate", str(run_dir), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "ndcg@10" in out and "full ranking" in out and "split test" in out

    # recommend: raw user 501 is dense user 1, items map back to raw ids 1001..1040
    assert main(["recommend", str(run_dir), "--user", "501", "-k", "5", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    seen_raw = {i + 1000 for i in markov_sequences()[0]}
    assert len(rec["items"]) == 5 and not set(rec["items"]) & seen_raw
    assert all(1001 <= i <= 1040 for i in rec["items"]) and rec["scores"] == sorted(rec["scores"], reverse=True)
    main(["recommend", str(run_dir), "--user", "501", "-k", "40", "--include-seen", "--json"])
    assert seen_raw <= set(json.loads(capsys.readouterr().out)["items"])


def test_build_task_shards_ctr_train_samples_by_rank(tmp_path: Path) -> None:
    """Ray workers get their CTR shard from build_task: each rank reads its part of the build
    (3 parts of 8 users), so ranks hold disjoint users and every sample of every split once."""
    from recsys.cli import main
    from recsys.experiment import build_task

    build = tmp_path / "synth"
    assert main(["data", "synth", "--users", "24", "--max-len", "160", "--min-len", "120", "--median-len", "130",
                 "--seed", "0", "--chunk-users", "8", "--output", str(build)]) == 0
    from recsys.tasks.base import TrainTask

    cfg = _cfg(build, tmp_path, task="ctr", model={"name": "din", "item_dim": 4, "cat_dim": 4},
               ctr={"max_history": 100})
    full = build_task(cfg)
    assert isinstance(full, TrainTask) and full.max_history == 100  # the ctr section reaches the task
    shards = [build_task(cfg, rank=r, world_size=3) for r in range(3)]
    for split in ("train", "valid", "test"):  # the planted parts are user ranges, read in order
        got = np.concatenate([t.splits[split].user_ids for t in shards])
        assert np.array_equal(got, full.splits[split].user_ids) and len(got) > 3
    assert [t.sequences.user_ids.tolist() for t in shards] == [list(range(1 + 8 * r, 9 + 8 * r)) for r in range(3)]
    with pytest.raises(ValueError, match="rank"):
        build_task(cfg, rank=3, world_size=3)
    # selection: a higher-is-better CTR metric only (logloss would keep the worst weights)
    assert build_task(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"select_metric": "gauc"})})
                      ).primary_metric == "gauc"
    with pytest.raises(ValueError, match="eval.select_metric: 'logloss'.*'auc', 'gauc'"):
        build_task(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"select_metric": "logloss"})}))


def test_finalize_run_records_extra_fields(build: Path, tmp_path: Path) -> None:
    """finalize_run (shared by run_experiment and the Ray job's rank 0) writes the complete model
    directory; `extra` lands in eval.json's fit summary and in the manifest."""
    from recsys import artifacts
    from recsys.experiment import build_model, build_task, finalize_run
    from recsys.train import fit

    cfg = _cfg(build, tmp_path / "runs", train={"epochs": 1, "batch_size": 16, "lr": 0.01})
    cfg.run_dir.mkdir(parents=True)
    task = build_task(cfg)
    model = build_model(cfg, task)
    result = fit(model, task, cfg.train_cfg(), cfg.run_dir)
    assert (cfg.run_dir / "checkpoints").is_dir()
    out = finalize_run(cfg, task, model, result, cfg.run_dir, extra={"ray_workers": 3})
    assert out == cfg.run_dir and not (out / "checkpoints").exists()
    ev = json.loads((out / "eval.json").read_text())
    assert ev["fit"]["ray_workers"] == 3 and ev["fit"]["epochs_run"] == 1 and "test/full/ndcg@10" in ev
    manifest = json.loads((out / artifacts.MANIFEST_FILE).read_text())
    assert manifest["ray_workers"] == 3, manifest
    artifacts.verify_manifest(out)
    assert (out / "index.faiss").is_file()


def test_fit_on_epoch_end_sees_each_epochs_checkpoint(build: Path, tmp_path: Path) -> None:
    """The hook the Ray job reports through: called once per finished epoch, after that epoch's
    checkpoint is on disk; a resumed fit calls it only for the epochs it runs."""
    from recsys.experiment import build_model, build_task
    from recsys.train import fit

    cfg = _cfg(build, tmp_path / "runs", train={"epochs": 2, "batch_size": 16, "lr": 0.01})
    task = build_task(cfg)
    seen: list[tuple[int, int]] = []

    def hook(epoch: int, ckpt: Path) -> None:
        seen.append((epoch, json.loads(ckpt.with_name("checkpoint.json").read_text())["loop"]["epoch"]))

    fit(build_model(cfg, task), task, cfg.train_cfg(), cfg.run_dir, on_epoch_end=hook)
    assert seen == [(1, 1), (2, 2)]
    seen.clear()
    more = cfg.train_cfg().model_copy(update={"epochs": 3})
    fit(build_model(cfg, task), task, more, cfg.run_dir, resume=True, on_epoch_end=hook)
    assert seen == [(3, 3)]


def test_recommend_matches_bruteforce(build: Path, tmp_path: Path) -> None:
    from recsys.retrieval import Recommender

    run = load_run(run_experiment(_cfg(build, tmp_path / "runs", train={"epochs": 1})))
    rec = Recommender(run)
    hist = rec.history(503)
    got = rec.recommend(503, k=7)
    items = torch.zeros(1, 8, dtype=torch.long)
    tail = torch.from_numpy(hist[-8:])
    items[0, -tail.numel():] = tail
    with torch.no_grad():
        s = (run.model.user_embedding(items) @ run.model.item_embeddings().T)[0]
    s[0] = -torch.inf
    s[torch.from_numpy(hist)] = -torch.inf
    want = run.vocabs["items"].decode(torch.topk(s, 7).indices.numpy())
    assert got.item_ids == want.tolist()
    with pytest.raises(KeyError, match="user 99999"):
        rec.recommend(99999)


def test_rerun_resumes_from_checkpoints(build: Path, tmp_path: Path) -> None:
    cfg = _cfg(build, tmp_path / "runs", keep_checkpoints=True)
    run_dir = run_experiment(cfg)
    first = (run_dir / "weights.safetensors").read_bytes()
    run_experiment(cfg)  # all epochs done: resumes at the end, same best weights
    assert (run_dir / "weights.safetensors").read_bytes() == first


def _games_subset(root: Path, out: Path, n_users: int = 400, n_items: int = 300) -> Path:
    """A real subset of the SASRec paper's Games data (Video.txt, lines `user item` in time order
    per user): interactions with the `n_items` most frequent items, then the first `n_users` users
    with >= 4 of them (a 300-user cut of the raw file has ~4,400 items seen once or twice, where no
    sequence model can beat popularity)."""
    raw = np.loadtxt(root / "amazon-games-sasrec" / "Video.txt", dtype=np.int64)
    top = np.argsort(-np.bincount(raw[:, 1]), kind="stable")[:n_items]
    raw = raw[np.isin(raw[:, 1], top)]
    u, c = np.unique(raw[:, 0], return_counts=True)
    users = u[c >= 4][:n_users]
    raw = raw[np.isin(raw[:, 0], users)]
    order = np.argsort(raw[:, 0], kind="stable")  # stable: keeps each user's time order
    raw = raw[order]
    items = np.unique(raw[:, 1])
    dense = np.searchsorted(items, raw[:, 1]) + 1
    sequences = np.split(dense, np.cumsum(np.unique(raw[:, 0], return_counts=True)[1])[:-1])
    return write_build(out, [s.tolist() for s in sequences], num_items=len(items), raw_item_ids=items, raw_user_ids=users)


@pytest.mark.slow
def test_real_games_subset_beats_popularity(shared_data: Path, tmp_path: Path) -> None:
    from recsys.evaluate import popularity_metrics
    from recsys.experiment import build_task

    build = _games_subset(shared_data, tmp_path / "games400")
    cfg = parse_experiment({
        "name": "games400", "task": "next_item", "data": {"build_dir": str(build)},
        "model": {"name": "sasrec", "dim": 32, "num_blocks": 2, "max_len": 20, "dropout": 0.2},
        "train": {"epochs": 30, "batch_size": 64, "lr": 2e-3}, "loss": {"kind": "ce"},
        "output_dir": str(tmp_path / "runs"), "seed": 0,
    })
    run_dir = run_experiment(cfg)
    ev = json.loads((run_dir / "eval.json").read_text())
    pop = popularity_metrics(build_task(cfg), "test")
    # full ranking, leave-one-out, test split, Games subset (400 users x top-300 items)
    print("games400 test full ndcg@10", ev["test/full/ndcg@10"], "popularity", pop["full/ndcg@10"])
    assert ev["test/full/ndcg@10"] > 1.3 * pop["full/ndcg@10"]
    assert ev["test/sampled100/ndcg@10"] > pop["sampled100/ndcg@10"]


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[2].glob("configs/experiments/*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_experiment_configs_validate(path: Path) -> None:
    from recsys.experiment import load_experiment

    from recsys.models.registry import model_task

    cfg = load_experiment(path)
    mcfg = cfg.model_cfg()
    assert model_task(mcfg.name) == cfg.task, (mcfg.name, cfg.task)
    if cfg.task == "next_item":
        assert mcfg.max_len >= 1
