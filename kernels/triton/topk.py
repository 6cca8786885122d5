"""Top-k aggregate (softmax over the k retrieved positions + weighted gather-sum of value rows),
forward and backward; and the public name of the top-k search launcher (kernels/triton/search.py).

topk_aggregate: one program per BLOCK_C candidates; the [BLOCK_C, KP, DR] tile of gathered value
rows is loaded at once (all k row loads in flight together, not one row per loop step).
Backward gives grad_scores (softmax Jacobian, in registers) and grad_values (fp32 atomic
scatter-add, so the summation order of repeated rows is not deterministic).
BLOCK_C is a fixed rule (enough programs to fill the device, tile <= 8192 elements); no autotuning.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton._common import check_cuda_or_interp, pow2, sm_count
from kernels.triton.configs import rows_block
from kernels.triton.search import topk_target_search_triton

__all__ = ["topk_aggregate_backward_triton", "topk_aggregate_triton", "topk_target_search_triton"]


@triton.jit
def _softmax_weights(s_ptr, i_ptr, base, cmask, K, KP: tl.constexpr):
    """Load a [BLOCK_C, KP] tile of scores/indices; return (weights fp32, indices, valid)."""
    kk = tl.arange(0, KP)
    m2 = cmask[:, None] & (kk[None, :] < K)
    idx = tl.load(i_ptr + base[:, None] + kk[None, :], mask=m2, other=-1)
    valid = idx >= 0
    s = tl.load(s_ptr + base[:, None] + kk[None, :], mask=m2, other=0.0).to(tl.float32)
    s = tl.where(valid, s, 0.0)
    m = tl.max(tl.where(valid, s, float("-inf")), axis=1)
    m = tl.where((m == float("-inf")) | (m == float("inf")), 0.0, m)
    e = tl.where(valid, tl.exp(s - m[:, None]), 0.0)
    den = tl.maximum(tl.sum(e, axis=1), 1.1754943508222875e-38)
    return e / den[:, None], idx, valid


@triton.jit(do_not_specialize=["C", "L", "K", "DR"])
def _aggregate_fwd_kernel(s_ptr, i_ptr, v_ptr, out_ptr, C, L, K, DR,
                          KP: tl.constexpr, DR_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cc < C
    dr = tl.arange(0, DR_P)
    drmask = dr < DR
    w, idx, valid = _softmax_weights(s_ptr, i_ptr, (b * C + cc) * K, cmask, K, KP)
    vrow = (b * L + tl.maximum(idx, 0))[:, :, None] * DR + dr[None, None, :]          # [BC, KP, DR_P]
    v = tl.load(v_ptr + vrow, mask=(valid & cmask[:, None])[:, :, None] & drmask[None, None, :], other=0.0)
    acc = tl.sum(w[:, :, None] * v.to(tl.float32), axis=1)
    tl.store(out_ptr + (b * C + cc)[:, None] * DR + dr[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=cmask[:, None] & drmask[None, :])


@triton.jit(do_not_specialize=["C", "L", "K", "DR"])
def _aggregate_bwd_kernel(g_ptr, s_ptr, i_ptr, v_ptr, gs_ptr, gv_ptr, C, L, K, DR,
                          KP: tl.constexpr, DR_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """grad_scores = w * (g.v_j - sum_j w_j g.v_j); grad_values[idx_j] += w_j g (fp32 atomics)."""
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cc < C
    kk = tl.arange(0, KP)
    dr = tl.arange(0, DR_P)
    drmask = dr < DR
    base = (b * C + cc) * K
    w, idx, valid = _softmax_weights(s_ptr, i_ptr, base, cmask, K, KP)
    g = tl.load(g_ptr + (b * C + cc)[:, None] * DR + dr[None, :], mask=cmask[:, None] & drmask[None, :],
                other=0.0).to(tl.float32)
    vrow = (b * L + tl.maximum(idx, 0))[:, :, None] * DR + dr[None, None, :]          # [BC, KP, DR_P]
    m3 = (valid & cmask[:, None])[:, :, None] & drmask[None, None, :]
    v = tl.load(v_ptr + vrow, mask=m3, other=0.0).to(tl.float32)
    gw = tl.sum(g[:, None, :] * v, axis=2)                                               # [BC, KP]
    tl.atomic_add(gv_ptr + vrow, w[:, :, None] * g[:, None, :], mask=m3)
    gs = w * (gw - tl.sum(w * gw, axis=1)[:, None])
    gs = tl.where(valid, gs, 0.0)
    tl.store(gs_ptr + base[:, None] + kk[None, :], gs.to(gs_ptr.dtype.element_ty),
             mask=cmask[:, None] & (kk[None, :] < K))


def agg_block_c_choices(k: int, dr: int) -> list[int]:
    """Every BLOCK_C the aggregate rule can pick for this (k, dr) (what a warm-up must compile)."""
    cap = max(1, 8192 // (pow2(k) * pow2(dr)))
    return [1 << i for i in range(7) if (1 << i) <= min(64, cap)]


def agg_block_c(b: int, c: int, kp: int, dr_p: int, device: torch.device) -> int:
    """Candidates per aggregate program: fill the device, keep the [BC, KP, DR] tile <= 8192."""
    return min(rows_block(b * c, sm_count(device)), max(1, 8192 // (kp * dr_p)))


def topk_aggregate_triton(scores: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
                          block_c: int | None = None) -> torch.Tensor:
    """scores/indices [B,C,k], values [B,L,dr] -> [B,C,dr] (values dtype); `block_c` overrides the rule."""
    check_cuda_or_interp(scores, indices, values)
    b, c, k = scores.shape
    l, dr = values.shape[1], values.shape[2]
    out = torch.empty((b, c, dr), dtype=values.dtype, device=values.device)
    if out.numel() == 0:
        return out
    if k == 0 or l == 0:
        return out.zero_()
    kp, dr_p = pow2(k), pow2(dr)
    bc = block_c or agg_block_c(b, c, kp, dr_p, values.device)
    _aggregate_fwd_kernel[(triton.cdiv(c, bc), b)](scores.contiguous(), indices.contiguous().to(torch.int64),
                                                   values.contiguous(), out, c, l, k, dr, KP=kp, DR_P=dr_p,
                                                   BLOCK_C=bc, num_warps=4)
    return out


def topk_aggregate_backward_triton(grad_out: torch.Tensor, scores: torch.Tensor, indices: torch.Tensor,
                                   values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (grad_scores [B,C,k] scores dtype, grad_values [B,L,dr] values dtype)."""
    check_cuda_or_interp(grad_out, scores, indices, values)
    b, c, k = scores.shape
    l, dr = values.shape[1], values.shape[2]
    gs = torch.zeros_like(scores)
    gv = torch.zeros((b, l, dr), dtype=torch.float32, device=values.device)
    if b and c and k and l and dr:
        kp, dr_p = pow2(k), pow2(dr)
        bc = agg_block_c(b, c, kp, dr_p, values.device)
        _aggregate_bwd_kernel[(triton.cdiv(c, bc), b)](grad_out.contiguous(), scores.contiguous(),
                                                       indices.contiguous().to(torch.int64), values.contiguous(),
                                                       gs, gv, c, l, k, dr, KP=kp, DR_P=dr_p, BLOCK_C=bc,
                                                       num_warps=4)
    return gs, gv.to(values.dtype)
