"""Triton simhash codes vs the reference (interpreter on CPU, or the GPU)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.reference.simhash import simhash_codes
from kernels.triton.simhash import simhash_codes_triton
from tests.kernels._devices import triton_devices


@pytest.mark.parametrize("device", triton_devices())
@settings(max_examples=8, deadline=None)
@given(n=st.integers(0, 70), d=st.integers(1, 80), s=st.integers(1, 5), tau=st.integers(1, 8),
       bf16=st.booleans(), seed=st.integers(0, 2**16))
def test_simhash_matches_reference(device, n, d, s, tau, bf16, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, d, generator=g)
    x = x.bfloat16() if bf16 else x
    proj = torch.randn(d, s * tau, generator=g)
    got = simhash_codes_triton(x.to(device), proj.to(device), tau).cpu()
    ref = simhash_codes(x, proj, tau)
    assert got.shape == ref.shape == (n, 2, s) and got.dtype == torch.int64
    # bits whose projection is within rounding of 0 may legitimately differ; all others must agree
    rot = (x.double() @ proj.double()).reshape(n, 2, s, tau)
    scale = 1 + (rot.abs().max().item() if rot.numel() else 0.0)
    certain = (rot.abs() > 1e-4 * scale).all(-1)
    assert torch.equal(got[certain], ref[certain])
    assert got.numel() == 0 or (int(got.min()) >= 0 and int(got.max()) < 2**tau)
