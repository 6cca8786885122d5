"""The service on real run directories (recsys run_experiment on a synthetic build): start-up
loading, bootstrap from the build's sequence parts, and atomic reload between SDIM and DARE."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from fastapi.testclient import TestClient

from recsys.data import layout
from recsys.data.vocab import load_vocabularies
from recsys.models.ctr_common import single_user_batch
from serving.app import create_app
from serving.bootstrap import bootstrap_store
from serving.settings import ServingSettings
from serving.store import open_store

AUTH = {"Authorization": "Bearer t0k"}


def settings(tmp_path: Path, dirs: dict[str, Path], **kw) -> ServingSettings:
    return ServingSettings(ctr_model_dir=dirs["sdim"], retrieval_model_dir=dirs["sasrec"], bootstrap_build_dir=dirs["build"],
                           store=f"sqlite:{tmp_path / 'state.sqlite3'}", token="t0k", **kw)


def first_user(build: Path) -> tuple[int, list[int], list[int]]:
    """raw user id, raw item history and dense item history of the build's first user."""
    t = layout.read_table(build, layout.SEQUENCES).slice(0, 1).to_pylist()[0]
    v = load_vocabularies(build)
    return int(v["users"].decode(np.array([t["user_id"]]))[0]), v["items"].decode(np.array(t["items"])).tolist(), t["items"]


def test_bootstrap_is_idempotent(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    store = open_store(f"sqlite:{tmp_path / 's.sqlite3'}", max_history=30)
    n_users = layout.read_table(model_dirs["build"], layout.SEQUENCES).num_rows
    assert bootstrap_store(store, model_dirs["build"]) == n_users == store.num_users()
    assert bootstrap_store(store, model_dirs["build"]) == 0
    user, raw_items, _ = first_user(model_dirs["build"])
    h = store.history(user)
    assert h.items.tolist() == raw_items[-30:] and h.version == len(raw_items) and (h.categories >= 0).all()


def test_serves_run_directories_and_reloads_atomically(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    with TestClient(create_app(settings(tmp_path, model_dirs))) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.text
        svc = c.app.state.svc
        user, raw_items, dense_items = first_user(model_dirs["build"])
        cands = svc.ctr.vocabs["items"].decode(np.arange(1, 21)).tolist()
        body = c.post("/v1/score", json={"user_id": user, "candidates": cands}).json()
        assert body["model"]["name"] == "sdim" and body["history_length"] == len(raw_items) and not body["cold_start"]
        # oracle: the trained model's forward on the build's history, categories from the build
        hi = torch.tensor(dense_items)
        hc = torch.from_numpy(svc.ctr.item_cats[hi.numpy()])
        ci = torch.arange(1, 21)
        with torch.inference_mode():
            expect = torch.sigmoid(svc.ctr.model(single_user_batch(hi, hc, ci, torch.from_numpy(svc.ctr.item_cats[1:21])))).numpy()
        np.testing.assert_allclose(body["scores"], expect, rtol=1e-5, atol=1e-6)

        rec = c.post("/v1/recommend", json={"user_id": user, "k": 5}).json()
        assert len(rec["items"]) == 5 and rec["retrieval_model"]["name"] == "sasrec" and not set(raw_items) & {x["item_id"] for x in rec["items"]}

        wrong_task = c.post("/admin/reload", json={"model_dir": str(model_dirs["sasrec"])}, headers=AUTH)
        assert wrong_task.status_code == 422 and "expected a 'ctr' model" in wrong_task.json()["message"]
        assert c.post("/v1/score", json={"user_id": user, "candidates": cands}).json() == body

        assert gc.get_freeze_count() > 0  # gc_freeze (default): the long-lived heap is frozen after start-up
        r = c.post("/admin/reload", json={"model_dir": str(model_dirs["dare"])}, headers=AUTH)
        assert r.status_code == 200 and r.json()["model"]["name"] == "dare" and r.json()["previous"]["name"] == "sdim"
        assert gc.get_freeze_count() > 0
        after = c.post("/v1/score", json={"user_id": user, "candidates": cands}).json()
        assert after["model"]["name"] == "dare" and after["scores"] != body["scores"]
        assert c.get("/readyz").json()["detail"]["ctr_model"].startswith("dare-")
    assert gc.get_freeze_count() == 0  # undone at shutdown


def test_item_lookup_table_maps_exactly_like_the_vocabulary() -> None:
    from recsys.data.vocab import Vocabulary
    from serving.models import MAX_LOOKUP_TABLE, CTRScorer, ModelInfo

    rng = np.random.default_rng(0)
    raw = np.concatenate([rng.integers(0, 6_000, 3_000), [0, 4_999, 5_000, 10**12, 2**63 - 1]])
    for top in (5_000, 2 * MAX_LOOKUP_TABLE):  # table lookup, then too large: binary search
        vocab = Vocabulary.fit(np.concatenate([rng.integers(0, 5_000, 800), [top]]))
        scorer = CTRScorer(torch.nn.Identity(), {"items": vocab}, ModelInfo("x", "v", "-"), np.zeros(len(vocab) + 1, np.int64), 100)
        assert (scorer._item_lut is None) == (top >= MAX_LOOKUP_TABLE)
        got = scorer.encode_items(raw)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, vocab.encode(raw))


def test_an_unusable_device_is_refused_by_name() -> None:
    import pytest
    import torch

    from serving.models import resolve_device

    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device: 'mps' is not supported"):
        resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda.is_available"):
            resolve_device("cuda")


def test_state_bytes_are_written_from_cpu_copies_and_round_trip() -> None:
    import torch

    from serving.models import state_from_bytes, state_to_bytes

    state = {"table": torch.randn(4, 8, 3)[:, ::2], "versions": torch.arange(5)}  # a non-contiguous view too
    back = state_from_bytes(state_to_bytes(state))
    assert set(back) == set(state)
    for k in state:
        assert back[k].device.type == "cpu" and torch.equal(back[k], state[k])
