"""Triton SDIM table build / gather (forward and backward) vs the reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.reference.sdim_table import sdim_bucket_table, sdim_gather
from kernels.triton.sdim import (sdim_bucket_table_backward_triton, sdim_bucket_table_triton,
                                 sdim_gather_backward_triton, sdim_gather_triton)
from tests.kernels._devices import rel_err, triton_device, triton_devices


def _case(seed, b, l, d, s, nb, dtype):
    g = torch.Generator().manual_seed(seed)
    history = torch.randn(b, l, d, generator=g).to(dtype)
    codes = torch.randint(0, nb, (b, l, s), generator=g)
    lengths = torch.randint(0, l + 1, (b,), generator=g)
    if b:
        lengths[0] = l                                   # one full row, others ragged (0 and 1 drawn too)
    return history, codes, lengths


@pytest.mark.parametrize("device", triton_devices())
@settings(max_examples=10, deadline=None)
@given(b=st.integers(1, 3), l=st.sampled_from([0, 1, 2, 31, 65, 130, 300]), d=st.integers(1, 40),
       s=st.integers(1, 4), nb=st.sampled_from([1, 2, 8, 16, 32]), bf16=st.booleans(), seed=st.integers(0, 2**16))
def test_table_forward_backward(device, b, l, d, s, nb, bf16, seed):
    dtype = torch.bfloat16 if bf16 else torch.float32
    history, codes, lengths = _case(seed, b, l, d, s, nb, dtype)
    got = sdim_bucket_table_triton(history.to(device), codes.to(device), lengths.to(device), nb).cpu()
    h32 = history.float().requires_grad_()
    ref = sdim_bucket_table(h32, codes, lengths, nb)      # fp32 oracle on the same (rounded) inputs
    assert got.shape == ref.shape and got.dtype == dtype
    assert rel_err(got, ref) < (1e-2 if bf16 else 1e-5)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed + 1))
    (ref_grad,) = torch.autograd.grad(ref, h32, grad) if l else (torch.zeros_like(h32),)
    got_grad = sdim_bucket_table_backward_triton(grad.to(dtype).to(device), codes.to(device),
                                                 lengths.to(device), dtype).cpu()
    assert got_grad.dtype == dtype
    assert rel_err(got_grad, ref_grad) < (1e-2 if bf16 else 1e-5)


def test_table_long_history_ragged():
    """L = 4,096 with lengths not multiples of any block size, including 0 and 1."""
    device = triton_device()
    history, codes, _ = _case(3, 4, 4096, 16, 2, 8, torch.float32)
    lengths = torch.tensor([4096, 4093, 1, 0])
    got = sdim_bucket_table_triton(history.to(device), codes.to(device), lengths.to(device), 8).cpu()
    ref = sdim_bucket_table(history, codes, lengths, 8)
    assert rel_err(got, ref) < 1e-5
    assert torch.equal(got[3], torch.zeros_like(got[3]))


@pytest.mark.parametrize("device", triton_devices())
@settings(max_examples=10, deadline=None)
@given(b=st.integers(1, 3), c=st.sampled_from([1, 2, 17, 40]), d=st.integers(1, 40), s=st.integers(1, 4),
       nb=st.sampled_from([1, 4, 16]), bf16=st.booleans(), seed=st.integers(0, 2**16))
def test_gather_forward_backward(device, b, c, d, s, nb, bf16, seed):
    dtype = torch.bfloat16 if bf16 else torch.float32
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(b, s, nb, d, generator=g)
    table[:, 0, 0] = 0.0                                    # an empty bucket: zero must stay zero
    table = table.to(dtype)
    codes = torch.randint(0, nb, (b, c, s), generator=g)
    got = sdim_gather_triton(table.to(device), codes.to(device)).cpu()
    t32 = table.float().requires_grad_()
    ref = sdim_gather(t32, codes)
    assert got.shape == ref.shape and got.dtype == dtype
    assert rel_err(got, ref) < (1e-2 if bf16 else 1e-5)
    grad = torch.randn(ref.shape, generator=g)
    (ref_grad,) = torch.autograd.grad(ref, t32, grad)
    got_grad = sdim_gather_backward_triton(grad.to(device), t32.detach().to(device), codes.to(device)).cpu()
    # (d=1: the exact gradient is 0 and both sides are rounding noise, hence the atol)
    assert torch.allclose(got_grad, ref_grad, rtol=1e-4, atol=1e-5)
