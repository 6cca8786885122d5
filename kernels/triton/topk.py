"""Top-k target search (TWIN/DARE retrieval) and the softmax aggregation over the k.

topk_target_search: one program per (block of BLOCK_C candidates, user). It streams the user's
valid history prefix in BLOCK_L chunks; each chunk's scores come from one tl.dot
[BLOCK_C, da] x [da, BLOCK_L] and live in registers only (the C x L score matrix never reaches
memory). Each score is packed with its position into one int64 key

    key = monotone_int32(score) << 32 | (2**31 - 1 - position)

so that "larger key" means "higher score, then smaller (older) position": the documented tie
rule (same as the reference's stable descending sort) falls out of plain integer max/min.
The running top-k per candidate is a [BLOCK_C, KP] register tile of keys. Merge = repeated max
extraction: while some candidate's best remaining chunk key beats its current k-th best, that key
replaces the k-th best (vectorised over the candidates of the block; the loop runs
max-over-candidates-of-insertions times, which after the first chunks is ~0 to a few per chunk,
as the k-th best threshold rises). A final tl.sort orders the k keys, which are decoded back to
(score, index); empty slots -> (-inf, -1).

topk_aggregate: softmax over the valid slots + weighted gather-sum of value rows; backward gives
grad_scores (softmax Jacobian, in registers) and grad_values (fp32 atomic scatter-add, so the
summation order of repeated rows is not deterministic).

Precision: fp32 inputs use tl.dot "tf32x3" on the GPU (near-fp32, so selections match the fp32
reference except at near-ties); bf16 inputs use a bf16 dot with fp32 accumulation; under the
interpreter everything is upcast to fp32 (its bf16 tl.dot is wrong).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton._common import check_cuda_or_interp, configs, interpreting, pow2

_NEG = tl.constexpr(-9223372036854775807)  # (constexpr: jit code may only read constexpr globals) key of an empty slot / invalid position (below any real score's key)


def _dot_mode(dtype: torch.dtype) -> tuple[bool, str]:
    if interpreting():
        return True, "ieee"
    if dtype == torch.float32:
        return True, "tf32x3"
    return False, "ieee"


@triton.jit
def _pack(score, pos):
    """fp32 score + int32 position -> int64 key ordered by (score desc, position asc)."""
    bits = (score + 0.0).to(tl.int32, bitcast=True)          # + 0.0 folds -0.0 into +0.0
    mono = bits ^ ((bits >> 31) & 0x7FFFFFFF)                 # signed-int order == float order
    return (mono.to(tl.int64) << 32) | (2147483647 - pos).to(tl.int64)


@triton.jit
def _unpack(key):
    hi = (key >> 32).to(tl.int32)
    bits = hi ^ ((hi >> 31) & 0x7FFFFFFF)
    score = bits.to(tl.float32, bitcast=True)
    pos = 2147483647 - (key - ((key >> 32) << 32))           # low 32 bits, no uint32 literal
    return score, pos


@triton.autotune(
    configs=configs(
        [triton.Config({"BLOCK_C": bc, "BLOCK_L": bl}, num_warps=w, num_stages=st)
         for bc in (32, 64) for bl in (64, 128) for w in (4, 8) for st in (2, 3)],
        triton.Config({"BLOCK_C": 16, "BLOCK_L": 32}, num_warps=4)),
    key=["C_BUCKET", "L_BUCKET", "DA_P", "KP", "UPCAST"],
)
@triton.jit
def _search_kernel(q_ptr, k_ptr, len_ptr, os_ptr, oi_ptr, C, L, DA, K, C_BUCKET, L_BUCKET,
                   DA_P: tl.constexpr, KP: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                   BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    n_valid = tl.minimum(tl.maximum(tl.load(len_ptr + b), 0), L).to(tl.int32)
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cc < C
    da = tl.arange(0, DA_P)
    damask = da < DA
    q = tl.load(q_ptr + (b * C + cc)[:, None] * DA + da[None, :], mask=cmask[:, None] & damask[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    slots = tl.arange(0, KP)
    neg = tl.full((BLOCK_C, KP), _NEG, tl.int64)
    # slots >= K are dead: +max so they are never the minimum (never replaced)
    run = tl.where(slots[None, :] < K, neg, tl.full((BLOCK_C, KP), 9223372036854775807, tl.int64))
    for l0 in range(0, n_valid, BLOCK_L):
        ll = l0 + tl.arange(0, BLOCK_L)
        lmask = ll < n_valid
        kt = tl.load(k_ptr + (b * L + ll)[:, None] * DA + da[None, :], mask=lmask[:, None] & damask[None, :], other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
        sc = tl.dot(q, tl.trans(kt), input_precision=PREC)          # [BLOCK_C, BLOCK_L], registers only
        key = tl.where(lmask[None, :], _pack(sc, ll[None, :]), _NEG)
        rmin = tl.min(run, axis=1)
        bmax = tl.max(key, axis=1)
        ins = bmax > rmin
        while tl.max(ins.to(tl.int32), axis=0) > 0:
            slot = tl.min(tl.where(run == rmin[:, None], slots[None, :], KP), axis=1)
            run = tl.where((slots[None, :] == slot[:, None]) & ins[:, None], bmax[:, None], run)
            key = tl.where(key == bmax[:, None], _NEG, key)
            rmin = tl.min(run, axis=1)
            bmax = tl.max(key, axis=1)
            ins = bmax > rmin
    run = tl.where(slots[None, :] < K, run, _NEG - 1)               # dead slots sort last
    run = tl.sort(run, dim=1, descending=True)
    score, pos = _unpack(run)
    empty = run <= _NEG
    score = tl.where(empty, float("-inf"), score)
    pos = tl.where(empty, -1, pos)
    optr = (b * C + cc)[:, None] * K + slots[None, :]
    omask = cmask[:, None] & (slots[None, :] < K)
    tl.store(os_ptr + optr, score, mask=omask)
    tl.store(oi_ptr + optr, pos, mask=omask)


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


@triton.autotune(
    configs=configs(
        [triton.Config({"BLOCK_C": bc}, num_warps=w) for bc in (16, 32, 64) for w in (4, 8)],
        triton.Config({"BLOCK_C": 16}, num_warps=4)),
    key=["C_BUCKET", "KP", "DR_P"],
)
@triton.jit
def _aggregate_fwd_kernel(s_ptr, i_ptr, v_ptr, out_ptr, C, L, K, DR, C_BUCKET,
                          KP: tl.constexpr, DR_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cc < C
    kk = tl.arange(0, KP)
    dr = tl.arange(0, DR_P)
    drmask = dr < DR
    w, idx, valid = _softmax_weights(s_ptr, i_ptr, (b * C + cc) * K, cmask, K, KP)
    acc = tl.zeros((BLOCK_C, DR_P), dtype=tl.float32)
    for j in range(0, K):
        sel = kk[None, :] == j
        wj = tl.sum(tl.where(sel, w, 0.0), axis=1)
        ij = tl.sum(tl.where(sel, idx, 0), axis=1)
        ok = ij >= 0
        v = tl.load(v_ptr + (b * L + tl.maximum(ij, 0))[:, None] * DR + dr[None, :],
                    mask=(ok & cmask)[:, None] & drmask[None, :], other=0.0)
        acc += wj[:, None] * v.to(tl.float32)
    tl.store(out_ptr + (b * C + cc)[:, None] * DR + dr[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=cmask[:, None] & drmask[None, :])


@triton.autotune(
    configs=configs(
        [triton.Config({"BLOCK_C": bc}, num_warps=w) for bc in (16, 32, 64) for w in (4, 8)],
        triton.Config({"BLOCK_C": 16}, num_warps=4)),
    key=["C_BUCKET", "KP", "DR_P"],
    reset_to_zero=["gv_ptr"],
)
@triton.jit
def _aggregate_bwd_kernel(g_ptr, s_ptr, i_ptr, v_ptr, gs_ptr, gv_ptr, C, L, K, DR, C_BUCKET,
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
    gw = tl.zeros((BLOCK_C, KP), dtype=tl.float32)
    for j in range(0, K):
        sel = kk[None, :] == j
        wj = tl.sum(tl.where(sel, w, 0.0), axis=1)
        ij = tl.sum(tl.where(sel, idx, 0), axis=1)
        m2 = ((ij >= 0) & cmask)[:, None] & drmask[None, :]
        vptr = (b * L + tl.maximum(ij, 0))[:, None] * DR + dr[None, :]
        v = tl.load(v_ptr + vptr, mask=m2, other=0.0).to(tl.float32)
        gw = tl.where(sel, tl.sum(g * v, axis=1)[:, None], gw)
        tl.atomic_add(gv_ptr + vptr, wj[:, None] * g, mask=m2)
    gs = w * (gw - tl.sum(w * gw, axis=1)[:, None])
    gs = tl.where(valid, gs, 0.0)
    tl.store(gs_ptr + base[:, None] + kk[None, :], gs.to(gs_ptr.dtype.element_ty),
             mask=cmask[:, None] & (kk[None, :] < K))


def topk_target_search_triton(queries: torch.Tensor, keys: torch.Tensor, lengths: torch.Tensor,
                              k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """queries [B,C,da], keys [B,L,da], lengths [B] -> (scores [B,C,k] f32, indices [B,C,k] i64)."""
    check_cuda_or_interp(queries, keys, lengths)
    b, c, da = queries.shape
    l = keys.shape[1]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if l >= 2**31 - 1:
        raise ValueError(f"history length {l} does not fit the packed int32 position")
    out_s = torch.empty((b, c, k), dtype=torch.float32, device=queries.device)
    out_i = torch.empty((b, c, k), dtype=torch.int64, device=queries.device)
    if b == 0 or c == 0:
        return out_s, out_i
    dtype = torch.promote_types(queries.dtype, keys.dtype)
    upcast, prec = _dot_mode(dtype)
    grid = lambda meta: (triton.cdiv(c, meta["BLOCK_C"]), b)  # noqa: E731
    _search_kernel[grid](queries.to(dtype).contiguous(), keys.to(dtype).contiguous(),
                         lengths.contiguous().to(torch.int64), out_s, out_i, c, l, da, k, pow2(c), pow2(l),
                         DA_P=pow2(da, 16), KP=pow2(k), UPCAST=upcast, PREC=prec)
    return out_s, out_i


def topk_aggregate_triton(scores: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """scores/indices [B,C,k], values [B,L,dr] -> [B,C,dr] (values dtype)."""
    check_cuda_or_interp(scores, indices, values)
    b, c, k = scores.shape
    l, dr = values.shape[1], values.shape[2]
    out = torch.empty((b, c, dr), dtype=values.dtype, device=values.device)
    if out.numel() == 0:
        return out
    if k == 0 or l == 0:
        return out.zero_()
    grid = lambda meta: (triton.cdiv(c, meta["BLOCK_C"]), b)  # noqa: E731
    _aggregate_fwd_kernel[grid](scores.contiguous(), indices.contiguous().to(torch.int64), values.contiguous(),
                                out, c, l, k, dr, pow2(c), KP=pow2(k), DR_P=pow2(dr))
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
        grid = lambda meta: (triton.cdiv(c, meta["BLOCK_C"]), b)  # noqa: E731
        _aggregate_bwd_kernel[grid](grad_out.contiguous(), scores.contiguous(), indices.contiguous().to(torch.int64),
                                    values.contiguous(), gs, gv, c, l, k, dr, pow2(c), KP=pow2(k), DR_P=pow2(dr))
    return gs, gv.to(values.dtype)
