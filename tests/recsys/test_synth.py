"""The planted generator: a valid build directory, deterministic, long-tailed, and a planted truth
that really holds (relevant positions = the target's cluster in the prefix; labels need both the
deep long-term behaviours and the recent drift)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.data import layout, schema
from recsys.data.sequences import JaggedSequences
from recsys.data.synth_cli import configure_cli
from recsys.data.synth import (
    CLICK_LOGIT,
    PLANTED_TRUTH_FILE,
    RELEVANT_POSITIONS,
    SynthConfig,
    generate,
    make_world,
)
from recsys.data.vocab import load_vocabularies

SMALL = dict(num_users=600, num_categories=40, clusters_per_category=2, items_per_cluster=25, max_length=800,
             length_median=250, chunk_users=250)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Rank AUC with average ranks for ties (test-local oracle; sklearn is not installed)."""
    _, inv, cnt = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(cnt) - (cnt - 1) / 2)[inv]
    pos = labels == 1
    p, n = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - p * (p + 1) / 2) / (p * n))


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(**SMALL, seed=3), out)
    return out


def test_build_directory_contract(build: Path) -> None:
    vocabs = load_vocabularies(build)
    cfg = SynthConfig(**SMALL, seed=3)
    assert len(vocabs["items"]) == cfg.num_items and len(vocabs["categories"]) == cfg.num_categories
    sequences = JaggedSequences.read(build)
    assert sequences.num_users == cfg.num_users and np.all(np.diff(sequences.user_ids) > 0)
    assert sequences.items.min() >= 1 and sequences.items.max() <= cfg.num_items
    world = make_world(cfg)
    np.testing.assert_array_equal(sequences.categories, world.category_of(sequences.items))
    for r in range(0, sequences.num_users, 97):  # times increase within a user
        t = sequences.times[sequences.offsets[r] : sequences.offsets[r + 1]]
        assert np.all(np.diff(t) > 0)
    samples = layout.read_table(build, layout.CTR_SAMPLES)
    assert samples.column_names == [schema.SPLIT, schema.USER, schema.PREFIX_LENGTH, schema.ITEM, schema.CATEGORY,
                                    schema.LABEL]
    split = samples[schema.SPLIT].to_numpy(zero_copy_only=False)
    assert {s: int((split == s).sum()) for s in ("train", "valid", "test")} == {"train": 4800, "valid": 1200,
                                                                                 "test": 1200}
    length = sequences.lengths[sequences.row_of_user()[samples[schema.USER].to_numpy()]]
    offset = np.select([split == "train", split == "valid"], [2, 1], 0)
    np.testing.assert_array_equal(samples[schema.PREFIX_LENGTH].to_numpy(), length - offset)
    labels = samples[schema.LABEL].to_numpy()
    assert 0.2 < labels.mean() < 0.6
    neg = layout.read_table(build, layout.EVAL_NEGATIVES)
    for r in range(0, sequences.num_users, 53):
        n = np.asarray(neg[schema.NEGATIVES][r].as_py())
        assert len(n) == schema.NUM_EVAL_NEGATIVES == len(set(n))
        assert not np.isin(n, sequences.user_items(r)).any()
    manifest = json.loads((build / schema.MANIFEST_FILE).read_text())
    assert manifest["counts"]["events"] == len(sequences.items)
    n_parts = manifest["layout"]["num_parts"]
    assert n_parts == layout.num_parts(build) > 1  # one part per chunk of users
    parts = {f"{t}/{layout.part_name(p)}" for t in layout.PER_USER_TABLES for p in range(n_parts)}
    assert set(manifest["files"]) >= parts | {PLANTED_TRUTH_FILE}


def test_deterministic_for_a_seed(build: Path, tmp_path: Path) -> None:
    generate(SynthConfig(**SMALL, seed=3), tmp_path / "again")
    generate(SynthConfig(**SMALL, seed=4), tmp_path / "other")
    again = json.loads((tmp_path / "again" / schema.MANIFEST_FILE).read_text())["files"]
    assert json.loads((build / schema.MANIFEST_FILE).read_text())["files"] == again  # same bytes, every file
    other = tmp_path / "other"
    assert not layout.read_table(build, layout.SEQUENCES).equals(layout.read_table(other, layout.SEQUENCES))


def test_long_tailed_lengths_reach_ten_thousand(tmp_path: Path) -> None:
    cfg = SynthConfig(num_users=120, num_categories=100, clusters_per_category=2, items_per_cluster=70,
                      length_median=2500, length_sigma=1.3, max_length=12_000, train_targets=1, valid_targets=0,
                      test_targets=0)
    m = generate(cfg, tmp_path)
    st = m["length_stats"]
    assert st["max"] >= 10_000 and st["max"] <= 12_000 and st["min"] >= cfg.min_length
    assert st["mean"] > 1.3 * st["median"]  # right-skewed


def test_relevant_positions_hold_the_planted_interest(build: Path) -> None:
    cfg = SynthConfig(**SMALL, seed=3)
    world = make_world(cfg)
    sequences = JaggedSequences.read(build)
    truth = pq.read_table(build / PLANTED_TRUTH_FILE)
    samples = layout.read_table(build, layout.CTR_SAMPLES)
    for col in (schema.SPLIT, schema.USER, schema.PREFIX_LENGTH, schema.ITEM):
        assert truth[col].equals(samples[col])  # row-aligned with ctr_samples
    lut = sequences.row_of_user()
    kinds = truth["target_kind"].to_numpy(zero_copy_only=False)
    rel_all = truth[RELEVANT_POSITIONS].to_pylist()
    users, prefixes, targets = (truth[c].to_numpy() for c in (schema.USER, schema.PREFIX_LENGTH, schema.ITEM))
    for i in range(0, len(rel_all), 7):
        items = sequences.user_items(lut[users[i]])
        p = prefixes[i]
        rel = np.asarray(rel_all[i], dtype=np.int64)
        same = np.flatnonzero(world.cluster_of(items[:p]) == world.cluster_of(targets[i]))
        if kinds[i] != "other":  # exactly the target cluster's behaviours before the prefix
            np.testing.assert_array_equal(rel, same)
        if kinds[i] == "long_term":
            assert len(rel) >= cfg.min_per_interest and rel.max() < len(items) - cfg.deep_offset  # planted deep
        elif kinds[i] == "drift":
            assert len(rel) == 0 or rel.min() >= len(items) - cfg.drift_window  # only recent
        else:  # the label of an "other" target ignores the history: nothing is relevant
            assert len(rel) == 0


def test_labels_need_the_deep_history_and_the_recent_drift(build: Path) -> None:
    """Oracle scores from the true item latents: <z_target, mean z of the target cluster's behaviours>
    over the whole prefix beat the same over the recent 50 only, and beat deep-only too."""
    cfg = SynthConfig(**SMALL, seed=3)
    world = make_world(cfg)
    sequences = JaggedSequences.read(build)
    truth = pq.read_table(build / PLANTED_TRUTH_FILE)
    labels = layout.read_table(build, layout.CTR_SAMPLES)[schema.LABEL].to_numpy()
    lut = sequences.row_of_user()
    users, prefixes, targets = (truth[col].to_numpy() for col in (schema.USER, schema.PREFIX_LENGTH, schema.ITEM))
    rel_all = truth[RELEVANT_POSITIONS].to_pylist()
    scores = {"full": [], "recent": [], "deep": []}
    for i in range(len(rel_all)):
        items = sequences.user_items(lut[users[i]])
        rel = np.asarray(rel_all[i], dtype=np.int64)
        zt = world.latent[targets[i]]
        for name, mask in (("full", rel >= 0), ("recent", rel >= prefixes[i] - 50), ("deep", rel < prefixes[i] - 50)):
            r = rel[mask]
            scores[name].append(float(zt @ world.latent[items[r]].mean(0)) if len(r) else 0.0)
    auc = {k: _auc(labels, np.asarray(v)) for k, v in scores.items()}
    assert auc["full"] > auc["recent"] + 0.05, auc
    assert auc["full"] > auc["deep"] + 0.01, auc
    assert auc["recent"] > 0.53, auc


def test_click_logit_is_the_noise_free_label_logit(build: Path) -> None:
    """planted_truth's click_logit: an "other" target's logit is exactly bias + item bias (its label ignores
    the history); the labels are calibrated to it (Bernoulli(sigmoid(logit + N(0, noise^2)))), and as the
    Bayes-oracle score it beats every history-based score of the oracle test above."""
    cfg = SynthConfig(**SMALL, seed=3)
    world = make_world(cfg)
    truth = pq.read_table(build / PLANTED_TRUTH_FILE)
    labels = layout.read_table(build, layout.CTR_SAMPLES)[schema.LABEL].to_numpy().astype(np.float64)
    logit = truth[CLICK_LOGIT].to_numpy()
    kinds = truth["target_kind"].to_numpy(zero_copy_only=False)
    targets = truth[schema.ITEM].to_numpy()
    other = kinds == "other"
    np.testing.assert_allclose(logit[other], cfg.label_bias + world.bias[targets[other]], atol=1e-12)
    assert np.ptp(logit[~other]) > 2 * cfg.long_term_weight * 0.5  # the taste term moves the others
    # calibration: expected click rate E[sigmoid(logit + noise)] per logit decile matches the label rate
    noise = np.random.default_rng(0).normal(0.0, cfg.label_noise, (64, len(logit)))
    expected = (1.0 / (1.0 + np.exp(-(logit[None] + noise)))).mean(0)
    bins = np.quantile(logit, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(bins, logit, side="right") - 1, 0, 9)
    for b in range(10):
        sel = which == b
        se = np.sqrt(expected[sel].mean() * (1 - expected[sel].mean()) / sel.sum())
        assert abs(labels[sel].mean() - expected[sel].mean()) < 4 * se + 1e-3, b
    assert _auc(labels, logit) > 0.78


def test_cli_and_bad_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    configure_cli(parser)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("num_categories: 20\nitems_per_cluster: 30\nlength_median: 200\n")
    args = parser.parse_args(["--config", str(cfg_file), "--users", "50", "--max-len", "700", "--seed", "1",
                              "--output", str(tmp_path / "b")])
    assert args.func(args) == 0
    assert JaggedSequences.read(tmp_path / "b").lengths.max() <= 700
    args = parser.parse_args(["--users", "5", "--max-len", "100", "--min-len", "120", "--output", str(tmp_path / "c")])
    assert args.func(args) == 2
    assert "min_length" in capsys.readouterr().err
