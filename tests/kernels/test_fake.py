"""The custom ops' fake implementations give the real shapes/dtypes (so torch.compile traces),
opcheck passes, and a torch.compile'd function using the ops runs on CPU."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.library import opcheck

import kernels._library  # noqa: F401  (registers recsys::*)
from kernels import ops


def _inputs():
    g = torch.Generator().manual_seed(0)
    hist = torch.randn(2, 11, 8, generator=g)
    codes = torch.randint(0, 4, (2, 11, 3), generator=g)
    lengths = torch.tensor([11, 4])
    table = torch.randn(2, 3, 4, 8, generator=g)
    cand = torch.randint(0, 4, (2, 5, 3), generator=g)
    q = torch.randn(2, 5, 8, generator=g)
    scores, idx = kernels._library.topk_target_search(q, hist, lengths, 3)
    values = torch.randn(2, 11, 6, generator=g)
    return {
        "simhash_codes": (hist, torch.randn(8, 6, generator=g), 2),
        "sdim_bucket_table": (hist, codes, lengths, 4),
        "sdim_bucket_table_backward": (table, codes, lengths),
        "sdim_gather": (table, cand),
        "sdim_gather_backward": (torch.randn(2, 5, 8, generator=g), table, cand),
        "topk_target_search": (q, hist, lengths, 3),
        "topk_aggregate": (scores, idx, values),
        "topk_aggregate_backward": (torch.randn(2, 5, 6, generator=g), scores, idx, values),
    }


@pytest.mark.parametrize("name", list(_inputs()))
def test_fake_matches_real(name):
    args = _inputs()[name]
    op = getattr(torch.ops.recsys, name).default
    real = op(*args)
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fake = op(*fake_args)
    real = real if isinstance(real, tuple) else (real,)
    fake = fake if isinstance(fake, tuple) else (fake,)
    assert [(r.shape, r.dtype) for r in real] == [(f.shape, f.dtype) for f in fake]


@pytest.mark.parametrize("name", ["sdim_bucket_table", "sdim_gather", "topk_aggregate", "topk_target_search"])
def test_opcheck(name):
    args = list(_inputs()[name])
    if name in ("sdim_bucket_table", "sdim_gather", "topk_aggregate"):
        pos = {"sdim_bucket_table": 0, "sdim_gather": 0, "topk_aggregate": 2}[name]
        args[pos] = args[pos].clone().requires_grad_()
    opcheck(getattr(torch.ops.recsys, name).default, tuple(args),
            test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_torch_compile_runs_on_cpu():
    a = _inputs()

    def stage(q, keys, lengths, values):
        s, i = ops.topk_target_search(q, keys, lengths, 3)
        return ops.topk_aggregate(s, i, values)

    q, keys, lengths, _ = a["topk_target_search"]
    values = a["topk_aggregate"][2]
    compiled = torch.compile(stage, fullgraph=False)
    assert torch.allclose(compiled(q, keys, lengths, values), stage(q, keys, lengths, values), atol=1e-6)
