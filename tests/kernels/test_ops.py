"""kernels.ops: dispatch to the reference on CPU, custom-op autograd vs autograd through the
reference, and clear errors on bad input."""

from __future__ import annotations

import pytest
import torch

from kernels import ops
from kernels.reference import sdim_table as ref_sdim
from kernels.reference import topk_search as ref_topk


def test_sdim_ops_grad_matches_reference_autograd():
    g = torch.Generator().manual_seed(0)
    history = torch.randn(3, 20, 8, generator=g, requires_grad=True)
    codes = torch.randint(0, 4, (3, 20, 5), generator=g)
    cand = torch.randint(0, 4, (3, 6, 5), generator=g)
    lengths = torch.tensor([20, 7, 0])
    w = torch.randn(3, 6, 8, generator=g)
    out = ops.sdim_gather(ops.sdim_bucket_table(history, codes, lengths, 4), cand)
    (got,) = torch.autograd.grad((out * w).sum(), history)
    h2 = history.detach().clone().requires_grad_()
    ref = ref_sdim.sdim_gather(ref_sdim.sdim_bucket_table(h2, codes, lengths, 4), cand)
    (want,) = torch.autograd.grad((ref * w).sum(), h2)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)
    assert got[2].eq(0).all() and got[1, 7:].eq(0).all()       # padding gets no gradient


def test_topk_ops_grad_matches_reference_autograd():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 5, 8, generator=g)
    keys = torch.randn(2, 30, 8, generator=g)
    values = torch.randn(2, 30, 6, generator=g, requires_grad=True)
    lengths = torch.tensor([30, 2])
    scores, idx = ops.topk_target_search(q, keys, lengths, 4)
    rs, ri = ref_topk.topk_target_search(q, keys, lengths, 4)
    assert torch.equal(idx, ri) and torch.equal(scores, rs)
    s1 = scores.clone().requires_grad_()
    out = ops.topk_aggregate(s1, idx, values)
    w = torch.randn(out.shape, generator=g)
    gs, gv = torch.autograd.grad((out * w).sum(), (s1, values))
    s2 = scores.clone().requires_grad_()
    v2 = values.detach().clone().requires_grad_()
    ref = ref_topk.topk_aggregate(s2, idx, v2)
    ws, wv = torch.autograd.grad((ref * w).sum(), (s2, v2))
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(gs, ws, atol=1e-6) and torch.allclose(gv, wv, atol=1e-6)


def test_bad_inputs_raise_naming_the_argument():
    q = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="lengths"):
        ops.topk_target_search(q, torch.randn(2, 5, 8), torch.tensor([5]), 2)
    with pytest.raises(ValueError, match="keys"):
        ops.topk_target_search(q, torch.randn(2, 5, 7), torch.tensor([5, 5]), 2)
    with pytest.raises(ValueError, match="codes"):
        ops.sdim_bucket_table(torch.randn(2, 5, 8), torch.zeros(2, 4, 3, dtype=torch.long), torch.tensor([5, 5]), 4)
    with pytest.raises(ValueError, match="lengths must be an integer tensor"):
        ops.topk_target_search(q, torch.randn(2, 5, 8), None, 2)
    with pytest.raises(ValueError, match="tau"):
        ops.simhash_codes(torch.randn(3, 8), torch.randn(8, 7), 2)
