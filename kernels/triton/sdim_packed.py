"""SDIM bucket table build, "packed" path (the default; `kernels/triton/sdim.py` dispatches).

table[b, s, j] = sum over l < lengths[b] with codes[b, l, s] == j of history[b, l]   ([B,S,nb,d])

One program per (signature group x d-block, chunk of the history, user). Per step of BLOCK_L rows:

- prefetch: the loads of the NEXT step's h tile [BLOCK_L, BLOCK_D] and codes [BLOCK_L, SB] (one
  contiguous run of SB int64 per row) are issued before this step's work, through pointers advanced
  by one add per step; D and S are specialised on 16-divisibility, so the loads are 128-bit;
- pack each row's codes into 32-bit words, FIELD bits per code, CPW codes per word
  (S=16 tau=4: two words of 8 codes), by OR-reductions over the [BLOCK_L, SB] tile;
- per word, the one-hot A[r, l] = (word[l] & mask[r]) == value[r], r = (signature, bucket) of that
  word: a 2-D expression of two 1-D vectors (no [S, nb, L] tensor, no reshape). `value` is anchored
  in the MMA accumulator layout (it adds a once-computed dot of zeros), so the compare is formed in
  registers in the MMA layout and feeds the tensor-core dot without a trip through shared memory
  (offline sm_90a build: no one-hot shared-memory stores left in the loop);
- acc_w[CPW*NB_P, BLOCK_D] += A @ h on tensor cores. fp32 history on the GPU: h = h1 + h2 + h3,
  three bf16 parts cut by bit masks (exact), three bf16 dots sharing the exact bf16 one-hot;
  bf16/fp16 history: one dot in its own dtype. Under the interpreter (whose bf16 dot is wrong) the
  same parts are upcast and the dots run in IEEE fp32, so the split itself is tested in CI.

Rows past lengths[b] load as h = 0 (never NaN, whatever the padding holds) and their codes are
ignored. A code outside [0, num_buckets) at a valid position (the reference raises ValueError) makes
that program store NaN: the user's table for that signature group comes out NaN, not silently wrong.
A non-finite history value at a valid position spreads NaN over its signature group (0 * inf in the
one-hot product), as on the dense path; the reference keeps it in its own bucket.
Chunks (split-L) write fp32 partial tables that the host sums in a fixed order: deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton._common import interpreting
from kernels.triton.configs import TableConfig, TableLayout


@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def _pack(code, CPW: tl.constexpr, FIELD: tl.constexpr, SB: tl.constexpr):
    """codes [BL, SB] -> word0, word1 [BL] int32: codes 0..CPW-1 and CPW..2*CPW-1, FIELD bits each."""
    j = tl.arange(0, SB)
    fld = (code & ((1 << FIELD) - 1)).to(tl.int32) << ((j % CPW) * FIELD)[None, :]  # disjoint bits
    w0 = tl.reduce(tl.where((j < CPW)[None, :], fld, 0), 1, _or)
    w1 = tl.reduce(tl.where((j >= CPW)[None, :], fld, 0), 1, _or)
    return w0, w1


@triton.jit
def _split3(h):
    """fp32 h -> bf16 h1, h2, h3 with h1 + h2 + h3 == h exactly: each part is the top 16 bits of
    what is left (truncation; each remainder is exact in fp32 and has 8 fewer significant bits)."""
    top = tl.full(h.shape, -65536, tl.int32)                                  # 0xFFFF0000
    b1 = h.to(tl.int32, bitcast=True) & top
    r1 = h - b1.to(tl.float32, bitcast=True)
    b2 = r1.to(tl.int32, bitcast=True) & top
    r2 = r1 - b2.to(tl.float32, bitcast=True)                                 # <= 8 significant bits left
    b3 = r2.to(tl.int32, bitcast=True)
    h1 = (b1 >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)
    h2 = (b2 >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)
    h3 = (b3 >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)
    return h1, h2, h3


@triton.jit
def _onehot_dot(acc, word, sel_mask, sel_val, h1, h2, h3, PARTS: tl.constexpr, DOT_F32: tl.constexpr):
    """acc[M, BD] += onehot[M, BL] @ (h1 + h2 + h3)[BL, BD], onehot[r, l] = word[l] & mask[r] == val[r]."""
    hit = (word[None, :] & sel_mask[:, None]) == sel_val[:, None]            # [M, BL]
    if DOT_F32:                                                               # interpreter: IEEE fp32
        hot = hit.to(tl.float32)
        acc = tl.dot(hot, h1.to(tl.float32), acc, input_precision="ieee")
        if PARTS == 3:
            acc = tl.dot(hot, h2.to(tl.float32), acc, input_precision="ieee")
            acc = tl.dot(hot, h3.to(tl.float32), acc, input_precision="ieee")
    else:                                                                     # exact 0/1 in the parts' dtype
        hot = hit.to(h1.dtype)
        acc = tl.dot(hot, h1, acc)
        if PARTS == 3:
            acc = tl.dot(hot, h2, acc)
            acc = tl.dot(hot, h3, acc)
    return acc


@triton.jit
def _store(out_ptr, acc, b, ch, NCH, S, NB, D, s0, dd, dmask, CPW: tl.constexpr, NB_P: tl.constexpr):
    r = tl.arange(0, CPW * NB_P)
    rs = s0 + r // NB_P
    rj = r % NB_P
    optr = out_ptr + (((b * NCH + ch) * S + rs) * NB + rj)[:, None] * D + dd[None, :]
    tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=((rs < S) & (rj < NB))[:, None] & dmask[None, :])


@triton.jit(do_not_specialize=["L", "NB", "CHUNK", "NCH"])          # D, S: 16-divisibility -> vector loads
def _table_packed_kernel(h_ptr, c_ptr, len_ptr, out_ptr, L, D, S, NB, CHUNK, NCH,
                         CPW: tl.constexpr, WORDS: tl.constexpr, SB: tl.constexpr, NB_P: tl.constexpr,
                         FIELD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, PARTS: tl.constexpr,
                         DOT_F32: tl.constexpr):
    # SB = WORDS * CPW signatures per program
    n_dblk = tl.cdiv(D, BLOCK_D)
    s0 = (tl.program_id(0) // n_dblk) * SB                                    # first signature of the group
    dd = (tl.program_id(0) % n_dblk) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = dd < D
    sig = s0 + tl.arange(0, SB)
    smask = sig < S
    ch = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    n_valid = tl.minimum(tl.maximum(tl.load(len_ptr + b), 0), L).to(tl.int32)
    start = ch * CHUNK
    end = tl.minimum(start + CHUNK, n_valid)
    r = tl.arange(0, CPW * NB_P)                                              # one-hot row = (signature, bucket)
    shift = ((r // NB_P) * FIELD).to(tl.int32)
    sel_mask = tl.full((CPW * NB_P,), (1 << FIELD) - 1, tl.int32) << shift
    sel_val = (r % NB_P).to(tl.int32) << shift
    # anchor the one-hot rows in the MMA accumulator layout (a dot of zeros, once): the compare is then
    # formed in registers in that layout and reaches the dot operand without a trip through shared memory
    za = tl.zeros((CPW * NB_P, 16), tl.float32 if DOT_F32 else tl.bfloat16)
    zb = tl.zeros((16, BLOCK_L), tl.float32 if DOT_F32 else tl.bfloat16)
    sel_val += tl.sum(tl.dot(za, zb), axis=1).to(tl.int32)
    acc0 = tl.zeros((CPW * NB_P, BLOCK_D), dtype=tl.float32)
    acc1 = tl.zeros((CPW * NB_P, BLOCK_D), dtype=tl.float32)
    nbad = tl.zeros((BLOCK_L, SB), dtype=tl.int32)                            # codes outside [0, NB) seen
    ll = tl.arange(0, BLOCK_L)
    row = b * L + start + ll                                                  # [BL] int64
    hp = h_ptr + row[:, None] * D + dd[None, :]                               # [BL, BD] pointers, advanced per step
    cp = c_ptr + row[:, None] * S + sig[None, :]                              # [BL, SB]
    h_nx = tl.load(hp, mask=(start + ll < end)[:, None] & dmask[None, :], other=0.0)
    c_nx = tl.load(cp, mask=(start + ll < end)[:, None] & smask[None, :], other=0)
    for l0 in range(start, end, BLOCK_L):
        h, code = h_nx, c_nx
        hp += BLOCK_L * D                                                     # prefetch the next step
        cp += BLOCK_L * S
        nxt = l0 + BLOCK_L + ll < end
        h_nx = tl.load(hp, mask=nxt[:, None] & dmask[None, :], other=0.0)
        c_nx = tl.load(cp, mask=nxt[:, None] & smask[None, :], other=0)
        nbad |= (code.to(tl.uint64, bitcast=True) >= NB).to(tl.int32)      # negative codes wrap to huge
        w0, w1 = _pack(code, CPW, FIELD, SB)
        if PARTS == 3:
            h1, h2, h3 = _split3(h)
        else:
            h1 = h
            h2 = h
            h3 = h
        acc0 = _onehot_dot(acc0, w0, sel_mask, sel_val, h1, h2, h3, PARTS, DOT_F32)
        if WORDS == 2:
            acc1 = _onehot_dot(acc1, w1, sel_mask, sel_val, h1, h2, h3, PARTS, DOT_F32)
    poison = tl.max(tl.max(nbad, axis=1), axis=0) > 0                         # a bad code: NaN, not a wrong sum
    _store(out_ptr, tl.where(poison, float("nan"), acc0), b, ch, NCH, S, NB, D, s0, dd, dmask, CPW, NB_P)
    if WORDS == 2:
        _store(out_ptr, tl.where(poison, float("nan"), acc1), b, ch, NCH, S, NB, D, s0 + CPW, dd, dmask, CPW, NB_P)


PACKED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def table_packed(h: torch.Tensor, c: torch.Tensor, n: torch.Tensor, out: torch.Tensor, num_buckets: int,
                 lay: TableLayout, cfg: TableConfig) -> torch.Tensor:
    """Launch the packed kernel: h [B,L,d] (PACKED_DTYPES), c [B,L,S] int64, n [B] int64 (all
    contiguous, L >= 1) into out [B,S,nb,d]; returns out."""
    b, l, d = h.shape
    s = c.shape[2]
    nch = cfg.n_chunks
    part = out if nch == 1 else torch.empty((b, nch, s, num_buckets, d), dtype=torch.float32, device=h.device)
    groups = -(-s // (lay.cpw * lay.words))
    grid = (groups * triton.cdiv(d, cfg.block_d), nch, b)
    _table_packed_kernel[grid](h, c, n, part, l, d, s, num_buckets, cfg.chunk, nch,
                               CPW=lay.cpw, WORDS=lay.words, SB=lay.cpw * lay.words, NB_P=lay.nb_p, FIELD=lay.field,
                               BLOCK_D=cfg.block_d, BLOCK_L=cfg.block_l,
                               PARTS=3 if h.dtype == torch.float32 else 1, DOT_F32=interpreting(),
                               num_warps=cfg.num_warps)
    if nch > 1:
        torch.sum(part, dim=1, out=out) if out.dtype == torch.float32 else out.copy_(part.sum(1))
    return out
