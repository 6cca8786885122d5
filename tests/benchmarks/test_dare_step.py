"""benchmarks/dare_step.py: the eager ops keep the op contract, the swap reaches the model and is
undone, and a smoke run gives rows whose ratio is eager / ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import dare_step
from kernels import ops
from kernels.reference import topk_search as ref


def test_eager_search_matches_the_op_contract() -> None:
    g = torch.Generator().manual_seed(3)
    q, keys = torch.randn(4, 3, 8, generator=g), torch.randn(4, 10, 8, generator=g)
    lengths = torch.tensor([10, 4, 1, 0])
    for k in (3, 6, 12):  # k > a row's length, k > L
        s, i = dare_step.eager_search(q, keys, lengths, k)
        rs, ri = ref.topk_target_search(q, keys, lengths, k)
        assert torch.equal(i, ri), k
        torch.testing.assert_close(s, rs)
    assert (i[3] == -1).all() and (i[2, :, 1:] == -1).all() and (i[2, :, 0] == 0).all()


def test_eager_ops_reach_the_model_and_are_restored() -> None:
    original = ops.topk_target_search, ops.topk_aggregate
    batch = dare_step.make_batch(6, 16, 40, 5, torch.device("cpu"), seed=1)
    ours = dare_step.Stepper(4, 16, 40, 5, torch.device("cpu"), seed=1)
    eager = dare_step.Stepper(4, 16, 40, 5, torch.device("cpu"), seed=1)
    before = dare_step.CALLS.copy()
    g_ours = ours.grads(batch)
    assert dare_step.CALLS == before  # the plain path does not touch the eager functions
    with dare_step.eager_ops():
        assert ops.topk_target_search is dare_step.eager_search
        g_eager = eager.grads(batch)
    assert (ops.topk_target_search, ops.topk_aggregate) == original
    assert dare_step.CALLS["search"] > before["search"] and dare_step.CALLS["aggregate"] > before["aggregate"]
    assert g_ours.norm() > 0
    torch.testing.assert_close(g_eager, g_ours, rtol=1e-6, atol=1e-9)


def test_smoke_run_writes_rows(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    assert dare_step.main(["--device", "cpu", "--smoke", "--ks", "4", "--steps", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["metric"].split(" ")[0] for r in rows] == ["ms", "grad_rel_diff"]
    step = rows[0]
    assert step["value"] > 0 and step["ratio"] == pytest.approx(step["reference"] / step["value"], rel=1e-3)
    assert rows[1]["value"] < 1e-6
    assert step["command"] == ".venv/bin/python -m benchmarks.dare_step --device cpu --smoke --ks 4 --steps 2"
