"""The offline evaluation report, built from two REAL tiny runs (SASRec next-item and SDIM CTR
trained through recsys.experiment.run_experiment on a small planted-synth build)."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines import report as rp
from recsys.eval.bootstrap import CTR_METRICS, bootstrap_mean_ci, bootstrap_means, multiplicity_chunks, percentile_ci
from recsys.eval.ctr import bce_with_logits
from recsys.eval.ranking import rank_metric_values

VOID = {"meta", "img", "br", "hr", "link", "input", "source", "col", "area", "base", "wbr"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from recsys.cli import main as cli
    from recsys.experiment import parse_experiment, run_experiment

    root = tmp_path_factory.mktemp("report")
    build = root / "synth"
    assert cli(["data", "synth", "--users", "40", "--max-len", "260", "--min-len", "120", "--median-len", "150",
                "--seed", "0", "--output", str(build)]) == 0
    common = {"data": {"build_dir": str(build)}, "output_dir": str(root / "runs"), "seed": 0}
    sas = parse_experiment({**common, "name": "sasrec_tiny", "task": "next_item",
                            "model": {"name": "sasrec", "dim": 16, "num_blocks": 1, "dropout": 0.1, "max_len": 20},
                            "train": {"epochs": 2, "batch_size": 16, "lr": 0.005}})
    sdim = parse_experiment({**common, "name": "sdim_tiny", "task": "ctr",
                             "model": {"name": "sdim", "item_dim": 8, "cat_dim": 8, "attention_dim": 16,
                                       "head_hidden": [16]},
                             "train": {"epochs": 1, "batch_size": 64, "lr": 0.003}})
    return [run_experiment(sas), run_experiment(sdim)]


@pytest.fixture(scope="module")
def built(runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("out")
    return rp.build_report(runs, out, bench_dir=Path(__file__).resolve().parents[2] / "benchmarks" / "results", n_boot=200)


class _Structure(HTMLParser):
    """Collects tags, checks nesting, and gathers the metric cells of the page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.sections: list[str] = []
        self.cells: list[tuple[dict[str, str], str, str]] = []  # (row attrs, field, text)
        self._row: dict[str, str] = {}
        self._field: str | None = None
        self._text = ""
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "section":
            self.sections.append(a.get("id", ""))
        if tag == "tr":
            self._row = a
        if tag == "td" and "data-field" in a:
            self._field, self._text = a["data-field"], ""
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._field is not None:
            self.cells.append((self._row, self._field, self._text))
            self._field = None
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self._field is not None:
            self._text += data


def _parse(path: Path) -> _Structure:
    p = _Structure()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return p


def test_report_has_every_section_and_valid_self_contained_html(built: dict[str, Path]) -> None:
    p = _parse(built["html"])
    assert p.doctype and not p.errors and not p.stack, (p.errors, p.stack)
    assert [t for t, _ in p.tags].count("html") == 1 and [t for t, _ in p.tags].count("body") == 1
    assert p.sections == [sid for sid, _ in rp.SECTIONS]
    imgs = [a for t, a in p.tags if t == "img"]
    # training curves, comparison, history length, trade-offs (planted needs a search-stage model)
    assert len(imgs) >= 4
    assert all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    assert not any(t in ("script", "link", "iframe") for t, _ in p.tags)  # one self-contained file
    assert not any(a.get("href", "#").split("#")[0] for _, a in p.tags)  # only in-page anchors
    md = built["md"].read_text()
    assert "## sasrec_tiny" in md and "## sdim_tiny" in md and "Protocol: full ranking" in md


def test_numbers_equal_metrics_json_and_the_runs_own_evaluation(built: dict[str, Path]) -> None:
    doc = json.loads(built["json"].read_text())
    cells = {(r["data-run"], r["data-protocol-id"], r["data-metric"], f): text
             for r, f, text in _parse(built["html"]).cells if "data-metric" in r}
    n = 0
    for run in doc["runs"]:
        assert run["code_version"] and run["config"]["name"] == run["name"] and run["build_manifest"]
        names = {m["metric"] for m in run["metrics"]}
        if run["task"] == "next_item":
            assert names == {f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in (5, 10, 20)}
            assert {m["protocol_id"] for m in run["metrics"]} == {"full", "sampled100"}
        else:
            assert names == {"auc", "gauc", "logloss"}
        for m in run["metrics"]:
            assert m["protocol"] and m["split"] == "test"
            for f in ("value", "ci_low", "ci_high", "n_users"):
                assert cells[(run["name"], m["protocol_id"], m["metric"], f)] == rp.fmt(m[f])
                n += 1
            # re-scored per user == the run's own eval.json (independent code paths)
            assert m["eval_json_value"] is not None
            assert m["value"] == pytest.approx(m["eval_json_value"], abs=1e-9)
            assert m["ci_low"] - 1e-12 <= m["value"] <= m["ci_high"] + 1e-12
        assert run["by_history_length"] and sum(b["n_samples"] for b in run["by_history_length"]) > 0
    assert n == len([c for c in cells])


def test_planted_retrieval_section_matches_brute_force(runs: list[Path]) -> None:
    """The planted-truth section end to end: TWIN-hard's search (the k most recent same-category
    behaviours, then the most recent others; defined without learned weights) through
    `retrieval_indices` and the report's slot -> position mapping equals NDCG@k / recall@k computed
    here straight from the build's sequences, ctr_samples and planted_truth.parquet (recall@10
is 1.0 on this build: its same-category behaviours are the planted ones)."""
    import types

    import pyarrow.parquet as pq

    from recsys.data import layout
    from recsys.experiment import build_model, parse_experiment

    summary = rp.read_run(runs[1])  # the CTR run: its build has planted_truth.parquet
    build = Path(summary.build_dir)
    cfg = parse_experiment({"name": "twin_hard", "task": "ctr", "data": {"build_dir": str(build)}, "seed": 0,
                            "model": {"name": "twin", "search": "hard", "item_dim": 4, "cat_dim": 4, "top_k": 5,
                                      "head_hidden": [8]}})
    k = 10
    rows = rp.planted_retrieval_rows(summary, types.SimpleNamespace(model=build_model(cfg).eval(), config=cfg), k=k)
    got = {r["metric"]: r for r in rows}

    sequences = {r["user_id"]: r["categories"] for r in layout.read_table(build, layout.SEQUENCES).to_pylist()}
    samples = layout.read_table(build, layout.CTR_SAMPLES).to_pylist()
    truth = pq.read_table(build / "planted_truth.parquet").to_pylist()
    disc = 1.0 / np.log2(np.arange(k) + 2.0)
    ndcg, recall, shifted = [], [], []
    for smp, t in zip(samples, truth, strict=True):
        assert (smp["user_id"], smp["prefix_length"], smp["item_id"]) == (t["user_id"], t["prefix_length"], t["item_id"])
        rel = set(t["relevant_positions"])
        if smp["split"] != "test" or not rel:
            continue
        cats = sequences[smp["user_id"]][: smp["prefix_length"]]  # histories here are shorter than max_history
        same = [i for i in range(len(cats)) if cats[i] == smp["category_id"]][::-1]
        order = (same + [i for i in range(len(cats)) if cats[i] != smp["category_id"]][::-1])[:k]
        gains = np.array([float(i in rel) for i in order] + [0.0] * (k - len(order)))
        ndcg.append((gains * disc).sum() / disc[: min(len(rel), k)].sum())
        recall.append(gains.sum() / min(len(rel), k))
        shifted.append(sum(i + 1 in rel for i in order) / min(len(rel), k))  # an off-by-one slot mapping
    assert ndcg and got[f"retrieval ndcg@{k}"]["n_samples"] == len(ndcg)
    assert got[f"retrieval ndcg@{k}"]["value"] == pytest.approx(np.mean(ndcg), abs=1e-9)
    assert got[f"retrieval recall@{k}"]["value"] == pytest.approx(np.mean(recall), abs=1e-9)
    assert abs(np.mean(shifted) - np.mean(recall)) > 0.1  # the check would catch a wrong slot -> position map
    assert "planted" in got[f"retrieval ndcg@{k}"]["protocol"] and "test" in got[f"retrieval ndcg@{k}"]["protocol"]


def test_metric_math_matches_the_project_metrics() -> None:
    from recsys.eval.ctr import auc, gauc
    from recsys.eval.ranking import ranking_metrics

    rng = np.random.default_rng(1)
    ranks = rng.integers(0, 40, 300)
    ref = ranking_metrics(torch.from_numpy(ranks))
    for key, v in ref.items():
        m, k = key.split("@")
        assert rank_metric_values(ranks, m, int(k)).mean() == pytest.approx(v, abs=1e-12)
    # CTR point values and bootstrap both come from recsys.eval.ctr (no second implementation)
    users, y, s = rng.integers(0, 30, 500), rng.integers(0, 2, 500), rng.integers(0, 8, 500).astype(float)
    p = rp.CTRPredictions("test", users, np.zeros(500, dtype=np.int64), y, s)
    point = rp.ctr_metric_values(p)
    assert point["auc"][0] == pytest.approx(auc(y, s), abs=1e-12)
    assert point["gauc"][0] == pytest.approx(gauc(users, y, s), abs=1e-12)
    # a bootstrap resample == the metrics of its users' samples explicitly duplicated
    boot = rp.ctr_metric_values(p, n_boot=3, seed=4)
    idx = np.random.default_rng(4).integers(0, 30, size=(3, 30))  # the same draws as the report's
    for r in range(3):
        dup = np.concatenate([np.flatnonzero(users == u) for u in np.unique(users)[idx[r]]])
        assert boot["auc"][r] == pytest.approx(auc(y[dup], s[dup]), abs=1e-12)
        assert boot["gauc"][r] == pytest.approx(gauc(users[dup], y[dup], s[dup]), abs=1e-12)
        assert boot["logloss"][r] == pytest.approx(bce_with_logits(s[dup], y[dup]).mean(), abs=1e-12)


def _dense_multiplicities(num_units: int, n_boot: int, seed: int) -> np.ndarray:
    """The report's former one-shot [n_boot, U] multiplicities (reference for the chunked draw)."""
    idx = np.random.default_rng(seed).integers(0, num_units, size=(n_boot, num_units))
    out = np.zeros((n_boot, num_units))
    np.add.at(out, (np.repeat(np.arange(n_boot), num_units), idx.ravel()), 1.0)
    return out


def test_chunked_bootstrap_equals_the_one_shot_draw() -> None:
    rng = np.random.default_rng(5)
    values = rng.random((37, 3))  # [U, M]
    dense = _dense_multiplicities(37, 23, seed=9)
    chunks = list(multiplicity_chunks(37, 23, seed=9, chunk=5))
    assert [c.shape[0] for c in chunks] == [5, 5, 5, 5, 3]
    assert np.array_equal(np.concatenate(chunks), dense)  # same indices, same order
    ref = (dense @ values) / dense.sum(1)[:, None]
    for chunk in (1, 4, 23, 50):
        np.testing.assert_allclose(bootstrap_means(values, 23, seed=9, chunk=chunk), ref, rtol=0, atol=1e-12)
    assert bootstrap_mean_ci(values[:, 0], 23, 9, chunk=4) == pytest.approx(percentile_ci(ref[:, 0]), abs=1e-12)
    assert not np.allclose(bootstrap_means(values, 23, seed=10), ref)  # the seed matters
    # CTR: chunk size does not change the bootstrap samples
    users, y = rng.integers(0, 40, 400), rng.integers(0, 2, 400)
    p = rp.CTRPredictions("test", users, np.zeros(400, dtype=np.int64), y, rng.normal(size=400))
    a, b = rp.ctr_metric_values(p, 17, seed=3, chunk=4), rp.ctr_metric_values(p, 17, seed=3, chunk=17)
    for m in CTR_METRICS:
        assert a[m].shape == (17,)
        np.testing.assert_allclose(a[m], b[m], rtol=0, atol=1e-12)


def test_everything_is_escaped(runs: list[Path]) -> None:
    r = rp.read_run(runs[0])
    r.name = '<img src=x onerror="alert(1)">&'
    r.metrics = [rp.MetricRow("ndcg@10", "<b>p</b>", "full", "test", 0.5, 0.4, 0.6, 3, 3)]
    page = rp.render_html({"generated": "now", "code_version": "<x>", "bootstrap": {"resamples": 1, "seed": 0}},
                          [r], [], {k: None for k in ("training", "comparison", "by_length", "planted", "tradeoffs")})
    assert "<img src=x" not in page and "<b>p</b>" not in page and "&lt;img src=x onerror=&#34;" in page  # Jinja2 autoescape (markupsafe)


def test_missing_run_file_is_named(runs: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "run"
    shutil.copytree(runs[1], bad)
    (bad / "eval.json").unlink()
    with pytest.raises(FileNotFoundError, match="eval.json"):
        rp.read_run(bad)


def _chromium(html: Path, tmp: Path) -> tuple[Path, str]:
    exe = shutil.which("chromium")
    shot = tmp / f"{html.stem}.png"
    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
         f"--screenshot={shot}", "--window-size=1280,2000", "--enable-logging=stderr", "--v=0", html.as_uri()],
        capture_output=True, text=True, timeout=120)
    return shot, proc.stderr


def _console_errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]


def test_report_renders_in_headless_chromium_without_console_errors(built: dict[str, Path], tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    if shutil.which("chromium") is None:
        pytest.skip("`chromium` binary not found (installed by scripts/sysdeps.sh, `make sysdeps`)")
    # positive control: the console-error detector sees a real page error
    probe = tmp_path / "probe.html"
    probe.write_text("<!DOCTYPE html><html><body><script>console.error('probe-error')</script></body></html>")
    _, err = _chromium(probe, tmp_path)
    assert any("probe-error" in ln for ln in _console_errors(err)), err[-2000:]

    shot, err = _chromium(built["html"], tmp_path)
    assert shot.is_file(), err[-2000:]
    assert _console_errors(err) == []
    img = mpimg.imread(shot)  # [H,W,C] floats in [0,1]
    assert img.shape[0] >= 1900 and img.shape[1] >= 1200
    non_white = (img[..., :3] < 0.9).any(-1).mean()
    assert non_white > 0.03, non_white
    # the plots are on the first screen: matplotlib's first line/bar colour (tab:blue) is drawn
    tab_blue = np.array([31, 119, 180]) / 255.0
    assert (np.abs(img[..., :3] - tab_blue).max(-1) < 0.04).sum() > 500


def test_curve_follows_the_selection_metric() -> None:
    """The validation curve is the metric that selected the run's weights when the config names one."""
    from types import SimpleNamespace

    history = [{"valid/full/ndcg@10": 0.1, "valid/sampled100/ndcg@10": 0.5}]
    plain = SimpleNamespace(history=history, primary="ndcg@10", config={"eval": {}})
    selected = SimpleNamespace(history=history, primary="ndcg@10",
                               config={"eval": {"select_metric": "sampled100/ndcg@10"}})
    assert rp.curve_key(plain) == "valid/full/ndcg@10"
    assert rp.curve_key(selected) == "valid/sampled100/ndcg@10"
