"""SDIM bucket table (BSE) build and candidate gather, forward and backward.

Table build: two paths, chosen by `TableConfig.path` (kernels/triton/configs.py `table_config`):
- "packed" (default): `kernels/triton/sdim_packed.py` - codes packed into 32-bit words, the one-hot
  formed in the MMA layout from two 1-D vectors, register prefetch, exact 3-part bf16 split for fp32.
- "dense" (the previous kernel, kept for A/B runs and as the fallback for nb > 256 or other dtypes):
  `_table_all_kernel`, when S_P*NB_P*D_P <= 16384 (e.g. S=16 tau=4 d=32): one program per (chunk of
  the history, user) accumulates `onehot(codes)^T @ history` for all signatures in one tl.dot per
  BLOCK_L rows ([S*nb, BLOCK_L] x [BLOCK_L, d]). Long histories at small B are split into chunks
  whose partial tables the host sums (deterministic, no atomics). Wider tables fall back to one
  program per (signature, d-block, user) (`_table_fwd_kernel`).
Work past lengths[b] is skipped entirely (ragged batches cost what their valid positions cost).
Block sizes are fixed (no autotuning).

Precision (dense path): bf16 history -> bf16 tl.dot (one-hot x bf16 products are exact, fp32
accumulate); fp32 history -> on the GPU, the all-signature kernel splits h into three bf16 parts
(h1 + h2 + h3 carries h's 24-bit mantissa) and runs three bf16 dots with the exact bf16 one-hot
(cheaper than "tf32x3", which also splits the one-hot); the per-signature kernels use "tf32x3"; fp32
IEEE under the interpreter (whose tl.dot on bf16 is wrong, so bf16 is upcast there).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton._common import check_cuda_or_interp, interpreting, pow2, sm_count
from kernels.triton.configs import TableConfig, rows_block, table_config, table_layout
from kernels.triton.sdim_packed import PACKED_DTYPES, table_packed

EPS = 1e-12  # F.normalize's eps, as in the reference


def _dot_mode(dtype: torch.dtype) -> tuple[bool, str]:
    """(upcast operands to fp32?, input_precision) for a one-hot tl.dot over `dtype` data."""
    if interpreting():
        return True, "ieee"
    if dtype == torch.float32:
        return True, "tf32x3"
    return False, "ieee"


@triton.jit(do_not_specialize=["L", "D", "S", "NB", "CHUNK", "NCH"])
def _table_all_kernel(h_ptr, c_ptr, len_ptr, out_ptr, L, D, S, NB, CHUNK, NCH,
                      S_P: tl.constexpr, NB_P: tl.constexpr, D_P: tl.constexpr, UPCAST: tl.constexpr,
                      PREC: tl.constexpr, SPLIT3: tl.constexpr, BLOCK_L: tl.constexpr):
    """All signatures at once: one program per (chunk of the history, user) reads each history row
    and its S codes exactly once and accumulates onehot[S_P*NB_P, BLOCK_L] @ h[BLOCK_L, D] into a
    [S_P*NB_P, D] fp32 tile; writes this chunk's partial table (summed over chunks by the host)."""
    ch = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    n_valid = tl.minimum(tl.maximum(tl.load(len_ptr + b), 0), L).to(tl.int32)
    start = ch * CHUNK
    end = tl.minimum(start + CHUNK, n_valid)
    dd = tl.arange(0, D_P)
    dmask = dd < D
    sig = tl.arange(0, S_P)
    bucket = tl.arange(0, NB_P)
    acc = tl.zeros((S_P * NB_P, D_P), dtype=tl.float32)
    for l0 in range(start, end, BLOCK_L):
        ll = l0 + tl.arange(0, BLOCK_L)
        lmask = ll < end
        row = b * L + ll
        h = tl.load(h_ptr + row[:, None] * D + dd[None, :], mask=lmask[:, None] & dmask[None, :], other=0.0)
        code = tl.load(c_ptr + row[None, :] * S + sig[:, None], mask=(sig < S)[:, None] & lmask[None, :], other=-1)
        hit = tl.reshape(code[:, None, :] == bucket[None, :, None], (S_P * NB_P, BLOCK_L))
        if SPLIT3:                      # fp32 history on the GPU: exact bf16 one-hot x 3 bf16 parts of h
            hot = hit.to(tl.bfloat16)
            h32 = h.to(tl.float32)
            h1 = h32.to(tl.bfloat16)
            r1 = h32 - h1.to(tl.float32)
            h2 = r1.to(tl.bfloat16)
            h3 = (r1 - h2.to(tl.float32)).to(tl.bfloat16)
            acc = tl.dot(hot, h1, acc)
            acc = tl.dot(hot, h2, acc)
            acc = tl.dot(hot, h3, acc)
        elif UPCAST:
            acc = tl.dot(hit.to(tl.float32), h.to(tl.float32), acc, input_precision=PREC)
        else:
            acc = tl.dot(hit.to(h.dtype), h, acc)
    r = tl.arange(0, S_P * NB_P)
    rs = r // NB_P
    rj = r % NB_P
    optr = out_ptr + (((b * NCH + ch) * S + rs) * NB + rj)[:, None] * D + dd[None, :]
    tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=((rs < S) & (rj < NB))[:, None] & dmask[None, :])


@triton.jit(do_not_specialize=["L", "D", "S", "NB"])
def _table_fwd_kernel(h_ptr, c_ptr, len_ptr, out_ptr, L, D, S, NB,
                      NB_P: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
                      PREC: tl.constexpr, BLOCK_L: tl.constexpr):
    s = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    n_valid = tl.minimum(tl.maximum(tl.load(len_ptr + b), 0), L)
    dd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = dd < D
    buckets = tl.arange(0, NB_P)
    acc = tl.zeros((NB_P, BLOCK_D), dtype=tl.float32)
    for l0 in range(0, n_valid, BLOCK_L):
        ll = l0 + tl.arange(0, BLOCK_L)
        lmask = ll < n_valid
        code = tl.load(c_ptr + (b * L + ll) * S + s, mask=lmask, other=-1)
        h = tl.load(h_ptr + (b * L + ll)[:, None] * D + dd[None, :],
                    mask=lmask[:, None] & dmask[None, :], other=0.0)
        hit = buckets[:, None] == code[None, :]                      # [NB_P, BLOCK_L] registers only
        if UPCAST:
            acc = tl.dot(hit.to(tl.float32), h.to(tl.float32), acc, input_precision=PREC)
        else:
            acc = tl.dot(hit.to(h.dtype), h, acc)
    optr = out_ptr + ((b * S + s) * NB + buckets[:, None]) * D + dd[None, :]
    tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=(buckets[:, None] < NB) & dmask[None, :])


@triton.jit(do_not_specialize=["L", "D", "S", "NB"])
def _table_bwd_kernel(g_ptr, c_ptr, len_ptr, out_ptr, L, D, S, NB,
                      BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """grad_history[b,l] = sum_s grad_table[b, s, codes[b,l,s]] for l < length, else 0."""
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    n_valid = tl.minimum(tl.maximum(tl.load(len_ptr + b), 0), L)
    ll = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    dd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = dd < D
    valid = ll < n_valid
    acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    for s in range(0, S):
        code = tl.load(c_ptr + (b * L + ll) * S + s, mask=valid, other=0)
        g = tl.load(g_ptr + ((b * S + s) * NB + code)[:, None] * D + dd[None, :],
                    mask=valid[:, None] & dmask[None, :], other=0.0)
        acc += g.to(tl.float32)
    tl.store(out_ptr + (b * L + ll)[:, None] * D + dd[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(ll < L)[:, None] & dmask[None, :])


@triton.jit(do_not_specialize=["C", "D", "S", "NB"])
def _gather_fwd_kernel(t_ptr, c_ptr, out_ptr, C, D, S, NB,
                       BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[b,c] = mean_s normalize(table[b, s, codes[b,c,s]])."""
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    dd = tl.arange(0, BLOCK_D)
    cmask = cc < C
    m2 = cmask[:, None] & (dd < D)[None, :]
    acc = tl.zeros((BLOCK_C, BLOCK_D), dtype=tl.float32)
    for s in range(0, S):
        code = tl.load(c_ptr + (b * C + cc) * S + s, mask=cmask, other=0)
        v = tl.load(t_ptr + ((b * S + s) * NB + code)[:, None] * D + dd[None, :], mask=m2, other=0.0)
        v = v.to(tl.float32)
        norm = tl.sqrt(tl.sum(v * v, axis=1))
        acc += v / tl.maximum(norm, 1e-12)[:, None]
    tl.store(out_ptr + (b * C + cc)[:, None] * D + dd[None, :], (acc / S).to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit(do_not_specialize=["C", "D", "S", "NB"])
def _gather_bwd_kernel(t_ptr, c_ptr, g_ptr, out_ptr, C, D, S, NB,
                       NB_P: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr,
                       BLOCK_C: tl.constexpr):
    """grad_table[b,s,j] = sum_{c: codes[b,c,s]=j} d normalize(v)/dv^T (grad_out[b,c]/S),
    accumulated as onehot^T @ grad_v per (user, signature): deterministic, no atomics."""
    s = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    dd = tl.arange(0, BLOCK_D)
    dmask = dd < D
    buckets = tl.arange(0, NB_P)
    acc = tl.zeros((NB_P, BLOCK_D), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + tl.arange(0, BLOCK_C)
        cmask = cc < C
        m2 = cmask[:, None] & dmask[None, :]
        code = tl.load(c_ptr + (b * C + cc) * S + s, mask=cmask, other=-1)
        v = tl.load(t_ptr + ((b * S + s) * NB + tl.maximum(code, 0))[:, None] * D + dd[None, :],
                    mask=m2, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + (b * C + cc)[:, None] * D + dd[None, :], mask=m2, other=0.0).to(tl.float32) / S
        norm = tl.sqrt(tl.sum(v * v, axis=1))
        big = norm > 1e-12
        inv = 1.0 / tl.maximum(norm, 1e-12)
        u = v * inv[:, None]
        ug = tl.sum(u * g, axis=1)
        gv = tl.where(big[:, None], (g - u * ug[:, None]) * inv[:, None], g * inv[:, None])
        hit = buckets[:, None] == code[None, :]                       # [NB_P, BLOCK_C]
        acc = tl.dot(hit.to(tl.float32), gv, acc, input_precision=PREC)
    optr = out_ptr + ((b * S + s) * NB + buckets[:, None]) * D + dd[None, :]
    tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=(buckets[:, None] < NB) & dmask[None, :])


def sdim_bucket_table_triton(history: torch.Tensor, codes: torch.Tensor, lengths: torch.Tensor,
                             num_buckets: int, config: TableConfig | None = None) -> torch.Tensor:
    """history [B,L,d], codes [B,L,S], lengths [B] -> [B,S,num_buckets,d] (history dtype).
    `config` (default: `table_config`'s rule) picks the path: "packed" (sdim_packed.py) or "dense"."""
    check_cuda_or_interp(history, codes, lengths)
    b, l, d = history.shape
    s = codes.shape[2]
    out = torch.empty((b, s, num_buckets, d), dtype=history.dtype, device=history.device)
    if out.numel() == 0:
        return out
    if l == 0:
        return out.zero_()
    h, c, n = history.contiguous(), codes.contiguous().to(torch.int64), lengths.contiguous().to(torch.int64)
    cfg = config or table_config(b, l, d, s, num_buckets, sm_count(history.device))
    lay = table_layout(s, num_buckets)
    if cfg.path == "packed" and lay is not None and h.dtype in PACKED_DTYPES:
        if cfg.chunk * cfg.n_chunks < l:
            raise ValueError(f"table config {cfg} does not cover L={l}")
        return table_packed(h, c, n, out, num_buckets, lay, cfg)
    return _table_dense(h, c, n, out, num_buckets)


def _table_dense(h: torch.Tensor, c: torch.Tensor, n: torch.Tensor, out: torch.Tensor,
                 num_buckets: int) -> torch.Tensor:
    """The previous path: dense all-signature one-hot kernel (or per-signature for wide tables)."""
    b, l, d = h.shape
    s = c.shape[2]
    upcast, prec = _dot_mode(h.dtype)
    s_p, nb_p, d_p = pow2(s), pow2(num_buckets, 2), pow2(d, 16)
    if s_p * nb_p >= 16 and s_p * nb_p * d_p <= 16384:
        block_l = 64
        want = max(1, -(-4 * sm_count(h.device) // b))
        chunk = -(-max(l, 1) // min(want, max(1, l // 1024)))
        chunk = -(-chunk // block_l) * block_l
        nch = -(-l // chunk)
        part = out if nch == 1 else torch.empty((b, nch, s, num_buckets, d), dtype=torch.float32, device=h.device)
        _table_all_kernel[(nch, b)](h, c, n, part, l, d, s, num_buckets, chunk, nch, S_P=s_p, NB_P=nb_p, D_P=d_p,
                                    UPCAST=upcast, PREC=prec, SPLIT3=prec == "tf32x3", BLOCK_L=block_l,
                                    num_warps=8)
        return out if nch == 1 else part.sum(1).to(out.dtype)
    block_d = min(pow2(d, 16), 64)
    _table_fwd_kernel[(s, triton.cdiv(d, block_d), b)](h, c, n, out, l, d, s, num_buckets,
                                                       NB_P=pow2(num_buckets, 16), BLOCK_D=block_d,
                                                       UPCAST=upcast, PREC=prec, BLOCK_L=64, num_warps=4)
    return out


def sdim_bucket_table_backward_triton(grad_table: torch.Tensor, codes: torch.Tensor, lengths: torch.Tensor,
                                      history_dtype: torch.dtype) -> torch.Tensor:
    """grad_table [B,S,nb,d], codes [B,L,S], lengths [B] -> grad_history [B,L,d]."""
    check_cuda_or_interp(grad_table, codes, lengths)
    b, s, nb, d = grad_table.shape
    l = codes.shape[1]
    out = torch.empty((b, l, d), dtype=history_dtype, device=grad_table.device)
    if out.numel() == 0:
        return out
    if s == 0:
        return out.zero_()
    block_d = min(pow2(d, 16), 64)
    _table_bwd_kernel[(triton.cdiv(l, 64), triton.cdiv(d, block_d), b)](
        grad_table.contiguous(), codes.contiguous().to(torch.int64), lengths.contiguous().to(torch.int64), out,
        l, d, s, nb, BLOCK_D=block_d, BLOCK_L=64, num_warps=4)
    return out


def sdim_gather_triton(table: torch.Tensor, candidate_codes: torch.Tensor) -> torch.Tensor:
    """table [B,S,nb,d], candidate_codes [B,C,S] -> [B,C,d] (table dtype)."""
    check_cuda_or_interp(table, candidate_codes)
    b, s, nb, d = table.shape
    c = candidate_codes.shape[1]
    out = torch.empty((b, c, d), dtype=table.dtype, device=table.device)
    if out.numel() == 0:
        return out
    if s == 0:
        return out.fill_(float("nan"))  # mean over zero signatures, as torch's mean gives
    bc = max(16, min(64, rows_block(b * c, sm_count(table.device))))
    _gather_fwd_kernel[(triton.cdiv(c, bc), b)](table.contiguous(), candidate_codes.contiguous().to(torch.int64), out,
                                                c, d, s, nb, BLOCK_D=pow2(d, 16), BLOCK_C=bc, num_warps=4)
    return out


def sdim_gather_backward_triton(grad_out: torch.Tensor, table: torch.Tensor,
                                candidate_codes: torch.Tensor) -> torch.Tensor:
    """grad_out [B,C,d], table [B,S,nb,d], candidate_codes [B,C,S] -> grad_table [B,S,nb,d]."""
    check_cuda_or_interp(grad_out, table, candidate_codes)
    b, s, nb, d = table.shape
    c = candidate_codes.shape[1]
    out = torch.empty_like(table)
    if out.numel() == 0:
        return out
    if c == 0:
        return out.zero_()
    _, prec = _dot_mode(torch.float32)
    _gather_bwd_kernel[(s, b)](table.contiguous(), candidate_codes.contiguous().to(torch.int64),
                               grad_out.contiguous(), out, c, d, s, nb,
                               NB_P=pow2(nb, 16), BLOCK_D=pow2(d, 16), PREC=prec, BLOCK_C=32, num_warps=4)
    return out
