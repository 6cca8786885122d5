"""Triton SDIM table build / gather (forward and backward) vs the reference.

The table build has two paths (`TableConfig.path`): "packed" (default, kernels/triton/sdim_packed.py)
and "dense" (the previous kernel). Exact checks use small-integer histories, so every sum is exact
in fp32 (and in bf16 while |sum| <= 256) and the result must EQUAL the reference's.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import ops
from kernels.reference.sdim_table import sdim_bucket_table, sdim_gather
from kernels.triton.configs import TableConfig, table_config, table_layout
from kernels.triton.sdim import (sdim_bucket_table_backward_triton, sdim_bucket_table_triton,
                                 sdim_gather_backward_triton, sdim_gather_triton)
from tests.kernels._devices import rel_err, triton_device, triton_devices
from tests.kernels.triton_on_cpu import use_triton_on_cpu


def _case(seed, b, l, d, s, nb, dtype):
    g = torch.Generator().manual_seed(seed)
    history = torch.randn(b, l, d, generator=g).to(dtype)
    codes = torch.randint(0, nb, (b, l, s), generator=g)
    lengths = torch.randint(0, l + 1, (b,), generator=g)
    if b:
        lengths[0] = l                                   # one full row, others ragged (0 and 1 drawn too)
    return history, codes, lengths


PATHS = ("packed", "dense")


def _cfg(path: str, b: int, l: int, d: int, s: int, nb: int, **kw) -> TableConfig:
    return table_config(b, l, d, s, nb, 2, path=path, **kw)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("device", triton_devices())
@settings(max_examples=10, deadline=None)
@given(b=st.integers(1, 3), l=st.sampled_from([0, 1, 2, 31, 65, 130, 300]), d=st.integers(1, 40),
       s=st.integers(1, 4), nb=st.sampled_from([1, 2, 8, 16, 32]), bf16=st.booleans(), seed=st.integers(0, 2**16))
def test_table_forward_backward(device, path, b, l, d, s, nb, bf16, seed):
    dtype = torch.bfloat16 if bf16 else torch.float32
    history, codes, lengths = _case(seed, b, l, d, s, nb, dtype)
    cfg = _cfg(path, b, l, d, s, nb)
    got = sdim_bucket_table_triton(history.to(device), codes.to(device), lengths.to(device), nb, cfg).cpu()
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


@pytest.mark.parametrize("path", PATHS)
def test_table_long_history_ragged(path):
    """L = 4,096 with lengths not multiples of any block size, including 0 and 1."""
    device = triton_device()
    history, codes, _ = _case(3, 4, 4096, 16, 2, 8, torch.float32)
    lengths = torch.tensor([4096, 4093, 1, 0])
    cfg = _cfg(path, 4, 4096, 16, 2, 8)
    got = sdim_bucket_table_triton(history.to(device), codes.to(device), lengths.to(device), 8, cfg).cpu()
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


# ---------------------------------------------------------------- packed table path
# (S, nb): one word or two per program, several groups, padded buckets (nb = 12, 2), wide fields (32, 256)
LAYOUTS = [(1, 2), (3, 4), (8, 8), (16, 16), (17, 16), (6, 32), (2, 256), (4, 12)]


def _int_case(seed: int, s: int, nb: int, lo: int, hi: int, dtype: torch.dtype, l: int = 150, d: int = 24):
    g = torch.Generator().manual_seed(seed)
    history = torch.randint(lo, hi, (4, l, d), generator=g).to(dtype)
    codes = torch.randint(0, nb, (4, l, s), generator=g)
    lengths = torch.tensor([l, 0, 1, 97])                  # full, empty, one row, ragged (not a block multiple)
    return history, codes, lengths


@pytest.mark.parametrize("s,nb", LAYOUTS)
def test_packed_exact_small_integers(s, nb):
    """fp32 (split into 3 bf16 parts on the GPU; 3 history chunks) and bf16 (one part): equal to the reference."""
    device = triton_device()
    for dtype, lo, hi, chunks in ((torch.float32, -8, 9, 3), (torch.bfloat16, -1, 2, None)):
        history, codes, lengths = _int_case(s * 100 + nb, s, nb, lo, hi, dtype)
        cfg = _cfg("packed", 4, 150, 24, s, nb, n_chunks=chunks)
        assert cfg.path == "packed" and cfg.n_chunks == (chunks or 1)
        got = sdim_bucket_table_triton(history.to(device), codes.to(device), lengths.to(device), nb, cfg).cpu()
        ref = sdim_bucket_table(history.float(), codes, lengths, nb).to(dtype)
        assert got.dtype == dtype and torch.equal(got, ref), (dtype, (got.float() - ref.float()).abs().max())
        assert got[1].eq(0).all()                          # length 0: an all-zero table


def test_packed_fp32_split_is_exact():
    """Every bucket holds exactly one row, values spanning 1e-30..1e30 with full 24-bit mantissas:
    the table must equal the history bitwise (h = h1 + h2 + h3 with no rounding)."""
    device = triton_device()
    g = torch.Generator().manual_seed(5)
    nb = 16
    history = torch.randn(1, nb, 16, generator=g) * torch.logspace(-30, 30, 16)
    codes = torch.stack([torch.arange(nb), torch.arange(nb).flip(0)], -1)[None]      # [1, 16, 2]
    got = sdim_bucket_table_triton(history.to(device), codes.to(device), torch.tensor([nb]).to(device), nb).cpu()
    assert torch.equal(got[0, 0], history[0]) and torch.equal(got[0, 1], history[0].flip(0))


def test_packed_padding_ignored_and_bad_codes_poison():
    """Past lengths[b], NaN history and out-of-range codes change nothing; an out-of-range code at a
    valid position (the reference raises) turns that user's signature group NaN, other users intact."""
    device = triton_device()
    g = torch.Generator().manual_seed(6)
    history = torch.randn(4, 40, 16, generator=g)
    codes = torch.randint(0, 16, (4, 40, 2), generator=g)
    lengths = torch.tensor([40, 20, 30, 30])
    ref = sdim_bucket_table(history, codes, lengths, 16)
    h2, c2 = history.clone(), codes.clone()
    h2[1, 20:] = float("nan")
    c2[1, 20:, 0], c2[1, 20:, 1] = -7, 1000
    c2[2, 5, 1] = 16
    c2[3, 29, 0] = -1
    got = sdim_bucket_table_triton(h2.to(device), c2.to(device), lengths.to(device), 16).cpu()
    assert rel_err(got[:2], ref[:2]) < 1e-6
    assert got[2].isnan().all() and got[3].isnan().all()


def test_packed_chunk_plans_agree_and_repeat_bitwise():
    device = triton_device()
    history, codes, lengths = _case(7, 2, 300, 32, 16, 16, torch.float32)
    ref = sdim_bucket_table(history, codes, lengths, 16)
    outs = [sdim_bucket_table_triton(history.to(device), codes.to(device), lengths.to(device), 16,
                                     _cfg("packed", 2, 300, 32, 16, 16, n_chunks=n, block_l=bl)).cpu()
            for n, bl in ((1, 64), (4, 32), (4, 32))]
    assert all(rel_err(o, ref) < 1e-6 for o in outs)
    assert torch.equal(outs[1], outs[2])                   # deterministic: no atomics, fixed summation order


def test_table_config_rules():
    assert table_layout(16, 16) == table_layout(16, 16).__class__(nb_p=16, field=4, cpw=8, words=2)
    assert table_layout(6, 32).cpw == 4 and table_layout(6, 32).field == 8
    assert table_layout(1, 2).nb_p * table_layout(1, 2).cpw >= 16      # tl.dot needs 16 one-hot rows
    assert table_layout(2, 512) is None
    cfg = table_config(256, 8192, 32, 16, 16, 132)                      # the H200 target shape
    assert (cfg.path, cfg.block_d, cfg.block_l, cfg.num_warps, cfg.n_chunks) == ("packed", 32, 64, 8, 3)
    assert cfg.chunk * cfg.n_chunks >= 8192
    assert table_config(2, 100, 8, 2, 512, 132).path == "dense"         # too many buckets for a packed word
    assert table_config(256, 8192, 32, 16, 16, 132, path="dense").path == "dense"
    with pytest.raises(ValueError, match="path"):
        table_config(1, 8, 8, 2, 4, 2, path="sparse")
    device = triton_device()
    h, c, n = (t.to(device) for t in _case(0, 1, 300, 8, 2, 4, torch.float32))
    with pytest.raises(ValueError, match="does not cover"):
        sdim_bucket_table_triton(h, c, n, 4, _cfg("packed", 1, 100, 8, 2, 4))


def test_table_grad_through_the_op_on_the_triton_path():
    """ops.sdim_bucket_table (default = packed path) forward and gradient == autograd through the reference."""
    device = triton_device()
    g = torch.Generator().manual_seed(8)
    history = torch.randn(3, 70, 16, generator=g)
    codes = torch.randint(0, 16, (3, 70, 16), generator=g)
    lengths = torch.tensor([70, 33, 0])
    w = torch.randn(3, 16, 16, 16, generator=g)
    ctx = use_triton_on_cpu() if device == "cpu" else contextlib.nullcontext()
    h = history.to(device).requires_grad_()
    with ctx:
        out = ops.sdim_bucket_table(h, codes.to(device), lengths.to(device), 16)
        (got,) = torch.autograd.grad((out * w.to(device)).sum(), h)
    h2 = history.clone().requires_grad_()
    ref = sdim_bucket_table(h2, codes, lengths, 16)
    (want,) = torch.autograd.grad((ref * w).sum(), h2)
    assert rel_err(out.detach().cpu(), ref.detach()) < 1e-6
    assert torch.allclose(got.cpu(), want, rtol=1e-5, atol=1e-5) and got[2].eq(0).all() and got[1, 33:].eq(0).all()
