"""Triton top-k target search and top-k aggregate (forward, backward) vs the reference.

Exact checks use small-integer embeddings: every dot product is then exact in any summation
order (fp32, tf32, bf16 alike), so indices must match the reference exactly - and such data has
many tied scores, which exercises the tie rule (smaller index wins) on every example.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.reference.topk_search import topk_aggregate, topk_target_search
from kernels.triton.topk import topk_aggregate_backward_triton, topk_aggregate_triton, topk_target_search_triton
from tests.kernels._devices import rel_err, triton_device, triton_devices


def _int_case(seed, b, c, l, da, dtype):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-2, 3, (b, c, da), generator=g).to(dtype)
    k = torch.randint(-2, 3, (b, l, da), generator=g).to(dtype)
    lengths = torch.randint(0, l + 1, (b,), generator=g)
    lengths[0] = l
    return q, k, lengths


@pytest.mark.parametrize("device", triton_devices())
@settings(max_examples=10, deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 20), l=st.sampled_from([0, 1, 2, 7, 33, 100, 257]),
       da=st.integers(1, 40), k=st.sampled_from([1, 2, 5, 16, 40]), bf16=st.booleans(), seed=st.integers(0, 2**16))
def test_search_exact_with_ties(device, b, c, l, da, k, bf16, seed):
    q, keys, lengths = _int_case(seed, b, c, l, da, torch.bfloat16 if bf16 else torch.float32)
    s, i = topk_target_search_triton(q.to(device), keys.to(device), lengths.to(device), k)
    rs, ri = topk_target_search(q, keys, lengths, k)
    assert s.dtype == torch.float32 and i.dtype == torch.int64 and s.shape == rs.shape == (b, c, k)
    assert torch.equal(i.cpu(), ri)
    assert torch.equal(s.cpu(), rs)


def test_tie_rule_smaller_index_wins():
    """All scores equal: the k oldest valid positions, in index order; padding never chosen."""
    device = triton_device()
    q = torch.ones(2, 3, 16)
    keys = torch.ones(2, 100, 16)
    keys[1, 5] = 2.0                                     # one strictly better key in row 1
    lengths = torch.tensor([100, 70])
    s, i = topk_target_search_triton(q.to(device), keys.to(device), lengths.to(device), 4)
    assert i[0].cpu().tolist() == [[0, 1, 2, 3]] * 3
    assert i[1].cpu().tolist() == [[5, 0, 1, 2]] * 3
    assert torch.equal(s[1, 0].cpu(), torch.tensor([32.0, 16.0, 16.0, 16.0]))
    # fewer valid positions than k: trailing slots (-inf, -1)
    s, i = topk_target_search_triton(q.to(device), keys.to(device), torch.tensor([2, 0]).to(device), 4)
    assert i[0, 0].cpu().tolist() == [0, 1, -1, -1] and i[1].cpu().eq(-1).all()
    assert torch.isinf(s[0, 0, 2:]).all() and (s[0, 0, 2:] < 0).all()


@pytest.mark.parametrize("device", triton_devices())
def test_search_long_history_continuous(device):
    """L = 4,096 (ragged, not block multiples), continuous scores: same top-k values as the
    reference, and every returned index really has the returned score."""
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 3, 16, generator=g)
    keys = torch.randn(2, 4096, 16, generator=g)
    lengths = torch.tensor([4093, 1000])
    s, i = topk_target_search_triton(q.to(device), keys.to(device), lengths.to(device), 8)
    s, i = s.cpu(), i.cpu()
    rs, _ = topk_target_search(q, keys, lengths, 8)
    assert rel_err(s, rs) < 1e-5
    assert (i >= 0).all() and (i < lengths[:, None, None]).all()
    rescored = torch.einsum("bcd,bckd->bck", q.double(), keys.double()[torch.arange(2)[:, None, None], i])
    assert torch.allclose(rescored, s.double(), atol=1e-4)


@pytest.mark.parametrize("device", triton_devices())
@settings(max_examples=10, deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 20), l=st.sampled_from([1, 3, 50]), dr=st.integers(1, 40),
       k=st.sampled_from([1, 3, 8, 20]), bf16=st.booleans(), seed=st.integers(0, 2**16))
def test_aggregate_forward_backward(device, b, c, l, dr, k, bf16, seed):
    q, keys, lengths = _int_case(seed, b, c, l, 4, torch.float32)
    g = torch.Generator().manual_seed(seed + 1)
    scores, indices = topk_target_search(q, keys, lengths, k)   # includes empty slots (-inf, -1)
    scores = torch.where(indices >= 0, torch.randn(scores.shape, generator=g), scores)
    dtype = torch.bfloat16 if bf16 else torch.float32
    values = torch.randn(b, l, dr, generator=g).to(dtype)
    got = topk_aggregate_triton(scores.to(device), indices.to(device), values.to(device)).cpu()
    s_ref = scores.clone().requires_grad_()
    v_ref = values.float().requires_grad_()
    ref = topk_aggregate(s_ref, indices, v_ref)
    assert got.shape == ref.shape and got.dtype == dtype
    tol = 1e-2 if bf16 else 1e-5
    assert rel_err(got, ref) < tol
    no_slot = (indices < 0).all(-1)
    assert got[no_slot].eq(0).all()
    grad = torch.randn(ref.shape, generator=g)
    ref_gs, ref_gv = torch.autograd.grad(ref, (s_ref, v_ref), grad)
    gs, gv = topk_aggregate_backward_triton(grad.to(device), scores.to(device), indices.to(device), values.to(device))
    assert gs.dtype == torch.float32 and gv.dtype == dtype
    assert rel_err(gs.cpu(), ref_gs) < tol and rel_err(gv.cpu(), ref_gv) < tol
    assert gs.cpu()[indices < 0].eq(0).all()
