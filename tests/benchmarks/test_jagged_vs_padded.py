"""benchmarks/jagged_vs_padded.py: the long-tailed lengths, the bucket plan, and bucketed search
giving exactly the padded search's result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import jagged_vs_padded as jp
from kernels import ops


def test_long_tailed_lengths() -> None:
    lengths = jp.long_tailed_lengths(256, 200, 8192, seed=0)
    assert lengths.shape == (256,) and lengths.min() >= 1 and lengths.max() == 8192
    assert 100 <= np.median(lengths) <= 400  # long tail: median far below the longest
    assert np.array_equal(lengths, jp.long_tailed_lengths(256, 200, 8192, seed=0))


def test_bucket_plan_covers_each_row_once_with_a_tight_width() -> None:
    lengths = torch.tensor([1, 64, 65, 128, 129, 700, 3, 1000])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    plan = jp.bucket_plan(offsets)
    rows = torch.cat([b.rows for b in plan]).sort().values
    assert torch.equal(rows, torch.arange(8))
    for b in plan:
        assert b.width == int(lengths[b.rows].max()) and torch.equal(b.lengths, lengths[b.rows])
        assert b.width <= 64 or int(lengths[b.rows].min()) * 2 > b.width  # one power-of-two group
        assert int(b.mask.sum()) == b.src.numel() == int(lengths[b.rows].sum())
    assert sorted(b.width for b in plan) == [64, 128, 129, 1000]


def test_bucketed_search_equals_padded_search() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 300, 40, 2, 90, 0, 17])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    values = torch.randn(int(lengths.sum()), 8, generator=g)
    q = torch.randn(7, 3, 8, generator=g)
    plan = jp.bucket_plan(offsets)
    s, i = jp.bucketed_search(q, plan, jp.bucket_keys(values, plan), k=10)
    rs, ri = jp.padded_search(q, values, offsets, k=10)
    assert torch.equal(i, ri) and torch.equal(s, rs)
    assert (i[5] == -1).all() and (i[3, :, 2:] == -1).all()  # empty and short users kept their -1 slots
    keys, lens = jp.pad_to_longest(values, offsets)
    expected = torch.zeros(7, 300, 8)  # row b: its values, then zeros
    for b in range(7):
        expected[b, : int(lengths[b])] = values[int(offsets[b]) : int(offsets[b + 1])]
    assert torch.equal(keys, expected) and torch.equal(lens, lengths)
    assert torch.equal(ops.topk_target_search(q, keys, lens, 10)[1], ri)


def test_main_writes_three_rows_per_candidate_count(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    assert jp.main(["--users", "16", "--longest", "256", "--median", "20", "--cands", "1,2", "--k", "8",
                    "--reps", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 6
    for r in rows[0::3] + rows[1::3]:
        assert r["ratio"] == pytest.approx(r["reference"] / r["value"], rel=1e-3)
    assert all(r["value"] == 1.0 for r in rows[2::3])  # bucketed indices == padded indices
    assert "B=16 users" in rows[0]["protocol"] and "longest 256" in rows[0]["protocol"]
