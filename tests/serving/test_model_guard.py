"""What a model directory must be to be served: the manifest rule, the allowed reload roots, error
bodies without internal paths, and the history window taken from the model's training."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from recsys.tasks.ctr import DEFAULT_MAX_HISTORY
from serving.app import create_app
from serving.loading import ModelDirError, trained_max_history
from serving.models import CTRScorer
from serving.settings import ServingSettings

AUTH = {"Authorization": "Bearer t0k"}


def app_settings(tmp_path: Path, dirs: dict[str, Path], **kw) -> ServingSettings:
    return ServingSettings(ctr_model_dir=dirs["sdim"], store=f"sqlite:{tmp_path / 'state.sqlite3'}", token="t0k", **kw)


def test_served_history_window_is_the_trained_cap(model_dirs: dict[str, Path]) -> None:
    scorer = CTRScorer.load(model_dirs["sdim"])  # a run written without a ctr: section -> the task default
    assert scorer.trained_max_history == DEFAULT_MAX_HISTORY == 2000
    assert scorer.max_history == 2000
    assert CTRScorer.load(model_dirs["sdim"], max_history=300).max_history == 300  # below the cap: as configured


def test_window_above_the_trained_cap_is_refused_or_warned(model_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ModelDirError, match="max_history: 10000 is above the 2000 behaviours the model was trained with"):
        CTRScorer.load(model_dirs["sdim"], max_history=10_000)
    with caplog.at_level(logging.WARNING, logger="serving.loading"):
        scorer = CTRScorer.load(model_dirs["sdim"], max_history=10_000, above_trained="warn")
    assert scorer.max_history == 10_000
    assert any("above the 2000 behaviours" in r.getMessage() for r in caplog.records)


def test_trained_cap_is_read_from_the_run_config_ctr_section() -> None:
    assert trained_max_history(SimpleNamespace(ctr=SimpleNamespace(max_history=30))) == 30
    assert trained_max_history(SimpleNamespace(ctr=None)) == DEFAULT_MAX_HISTORY
    assert trained_max_history(SimpleNamespace()) == DEFAULT_MAX_HISTORY


def test_app_serves_the_trained_window_and_refuses_a_longer_one(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    with TestClient(create_app(app_settings(tmp_path, model_dirs, bootstrap_build_dir=None))) as c:
        assert c.app.state.svc.ctr.max_history == 2000
        assert c.app.state.svc.store.max_history == 10_000  # the durable log keeps more than one model's window
    with pytest.raises(ModelDirError, match="max_history"):
        with TestClient(create_app(app_settings(tmp_path, model_dirs, max_history=5000))):
            pass


def broken_copies(root: Path, src: Path) -> dict[str, tuple[Path, str]]:
    """Copies of a valid run directory, each broken one way: name -> (dir, expected message)."""
    out: dict[str, tuple[Path, str]] = {}

    def copy(name: str) -> Path:
        d = root / name
        shutil.copytree(src, d)
        return d

    d = copy("no_manifest")
    (d / "manifest.json").unlink()
    out["no_manifest"] = (d, "no manifest.json")
    d = copy("empty_files")
    m = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps({**m, "files": {}}))
    out["empty_files"] = (d, "lists no files")
    d = copy("unlisted_vocab")
    m = json.loads((d / "manifest.json").read_text())
    vocab = sorted(k for k in m["files"] if k.startswith("vocab/"))[0]
    del m["files"][vocab]
    (d / "manifest.json").write_text(json.dumps(m))
    out["unlisted_vocab"] = (d, f"{vocab} is not listed in manifest.json")
    d = copy("tampered")
    (d / "config.yaml").write_text((d / "config.yaml").read_text() + "\n# edited\n")
    out["tampered"] = (d, "checksum mismatch for config.yaml")
    return out


def test_manifest_must_list_every_file_the_loader_opens(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    root = tmp_path / "models"
    copies = broken_copies(root, model_dirs["dare"])
    good = root / "dare_ok"
    shutil.copytree(model_dirs["dare"], good)
    with TestClient(create_app(app_settings(tmp_path, model_dirs, reload_roots=[root]))) as c:
        before = c.app.state.svc.ctr
        for name, (d, expect) in copies.items():
            r = c.post("/admin/reload", json={"model_dir": str(d)}, headers=AUTH)
            msg = r.json()["message"]
            assert r.status_code == 422 and expect in msg and "previous model" in msg, (name, r.text)
            assert str(tmp_path) not in r.text, (name, r.text)  # no internal path in the error body
            assert c.app.state.svc.ctr is before
        r = c.post("/admin/reload", json={"model_dir": str(good)}, headers=AUTH)
        assert r.status_code == 200 and r.json()["model"]["name"] == "dare", r.text


def test_reload_only_under_the_allowed_roots(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    outside = tmp_path / "elsewhere" / "dare"
    shutil.copytree(model_dirs["dare"], outside)
    link = model_dirs["sdim"].parent / "link_out"  # a symlink inside the root pointing outside it
    link.symlink_to(outside)
    try:
        with TestClient(create_app(app_settings(tmp_path, model_dirs))) as c:  # default root: runs/ (sdim's parent)
            for d in (outside, link):
                r = c.post("/admin/reload", json={"model_dir": str(d)}, headers=AUTH)
                assert r.status_code == 422 and "not under an allowed reload root" in r.json()["message"], r.text
                assert str(tmp_path) not in r.text
            sibling = c.post("/admin/reload", json={"model_dir": str(model_dirs["dare"])}, headers=AUTH)
            assert sibling.status_code == 200, sibling.text
    finally:
        link.unlink()
