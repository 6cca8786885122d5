"""Top-k target search (TWIN/DARE retrieval), split over the history ("split-K" style).

Stage 1, one program per (block of candidates, chunk of the history, user):
  pass A  scores each SUB-wide sub-tile of the chunk (tl.dot, or a broadcast product when there
          are too few candidates for a dot) and keeps the element-wise fp32 max over sub-tiles: the
          maxima of SUB disjoint groups. The KP-th largest group maximum (tl.topk of one small
          tile) is a lower bound T on the chunk's KP-th largest score.
  pass B  re-scores the chunk (same arithmetic, so the same fp32 scores) and writes (score,
          position) of every score >= T to a per-(candidate, chunk) scratch row (rank from
          tl.cumsum); for N(0,1) data about 1.1-1.4 x KP pass, never more than CAP = SUB = 2 KP in
          our simulations. Only those are packed into int64 keys: one tl.topk over the
          [BLOCK_C, CAP] scratch tile gives the chunk's exact top KP (ties at T included). If any row of the block has more than CAP keys >= T
          (heavy ties, adversarial data) the block takes the exact fallback: a running top-KP over
          the chunk's sub-tiles (tl.join + tl.topk), slower but exact.
  DIRECT  when the chunk is a single sub-tile (few candidates: C <= 4, one per program, SUB = 512
          positions scored by a broadcast product): one tl.topk of the chunk, the history read once.
Stage 2 (only with more than one chunk): per candidate, tl.topk over its chunks' KP-lists.

Selection work per score is a few integer operations plus amortised small sorts, instead of the
full per-score sorting/insertion of a single-pass kernel, and one long row is spread over many
programs (B=1 L=8192 C=512: 256 programs instead of 32).

Keys: key = monotone_int32(score) << 32 | (2**31 - 1 - position), so "larger key" = "higher
score, then smaller position": the documented tie rule (equal scores -> the smaller (older)
index wins, as the reference's stable descending sort) is plain integer order, exact under ties.

Precision: fp32 inputs use tl.dot "tf32x3" on the GPU (near-fp32; selections match the fp32
reference except at near-ties within ~1e-6 relative); bf16 inputs a bf16 dot with fp32
accumulation; the interpreter upcasts to fp32 and uses IEEE (its bf16 tl.dot is wrong).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton._common import check_cuda_or_interp, interpreting, pow2, sm_count
from kernels.triton.configs import SearchConfig, search_config, search_kp

_NEG = tl.constexpr(-9223372036854775807)  # key of an empty slot / invalid position (below any real key)


def dot_mode(dtype: torch.dtype) -> tuple[bool, str]:
    """(upcast operands to fp32?, tl.dot input_precision) for scores over `dtype` inputs."""
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


@triton.jit
def _sub_scores(q, k_ptr, row0, l0, end, da, damask, DA, SUB: tl.constexpr, UPCAST: tl.constexpr,
                PREC: tl.constexpr, USE_DOT: tl.constexpr):
    """fp32 scores [BLOCK_C, SUB] of positions l0 .. l0+SUB-1 (-inf past `end`) and the positions."""
    ll = l0 + tl.arange(0, SUB)
    lmask = ll < end
    kt = tl.load(k_ptr + (row0 + ll)[:, None] * DA + da[None, :], mask=lmask[:, None] & damask[None, :], other=0.0)
    if UPCAST:
        kt = kt.to(tl.float32)
    if USE_DOT:
        sc = tl.dot(q, tl.trans(kt), input_precision=PREC)
    else:
        sc = tl.sum(q.to(tl.float32)[:, None, :] * kt.to(tl.float32)[None, :, :], axis=2)
    return tl.where(lmask[None, :], sc, float("-inf")), ll


@triton.jit
def _sub_keys(q, k_ptr, row0, l0, end, da, damask, DA, SUB: tl.constexpr, UPCAST: tl.constexpr,
              PREC: tl.constexpr, USE_DOT: tl.constexpr):
    """Keys [BLOCK_C, SUB] of positions l0 .. l0+SUB-1 (NEG past `end`)."""
    sc, ll = _sub_scores(q, k_ptr, row0, l0, end, da, damask, DA, SUB, UPCAST, PREC, USE_DOT)
    return tl.where((ll < end)[None, :], _pack(sc, ll[None, :]), _NEG)


@triton.jit
def _topk(x, KP: tl.constexpr, INTERP: tl.constexpr):
    """Top KP of each row of x [R, N] (distinct keys apart from _NEG padding), sorted descending.
    GPU: tl.topk (bitonic). Interpreter: KP rounds of max extraction - the same result, but
    tl.topk's xor-sum reductions run element by element in Python there (minutes per call)."""
    if INTERP:
        slots = tl.arange(0, KP)
        out = tl.full((x.shape[0], KP), _NEG, tl.int64)
        for j in tl.static_range(KP):
            m = tl.max(x, axis=1)
            out = tl.where(slots[None, :] == j, m[:, None], out)
            x = tl.where(x == m[:, None], _NEG, x)
    else:
        out = tl.topk(x, KP, dim=1)
    return out


@triton.jit
def _store_final(best, os_ptr, oi_ptr, rows, cmask, K, KP: tl.constexpr):
    """Decode sorted keys [BLOCK_C, KP] and store the first K slots; empty -> (-inf, -1)."""
    slots = tl.arange(0, KP)
    score, pos = _unpack(best)
    empty = best <= _NEG
    score = tl.where(empty, float("-inf"), score)
    pos = tl.where(empty, -1, pos)
    optr = rows[:, None] * K + slots[None, :]
    omask = cmask[:, None] & (slots[None, :] < K)
    tl.store(os_ptr + optr, score, mask=omask)
    tl.store(oi_ptr + optr, pos, mask=omask)


@triton.jit(do_not_specialize=["C", "L", "DA", "K", "CHUNK", "NCH"])
def _chunk_topk_kernel(q_ptr, k_ptr, len_ptr, part_ptr, scr_ptr, pos_ptr, os_ptr, oi_ptr, C, L, DA, K, CHUNK,
                       NCH,
                       DA_P: tl.constexpr, KP: tl.constexpr, SUB: tl.constexpr, CAP: tl.constexpr,
                       BLOCK_C: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                       USE_DOT: tl.constexpr, DIRECT: tl.constexpr, FINAL: tl.constexpr,
                       INTERP: tl.constexpr):
    pid_c = tl.program_id(0)
    ch = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    n_valid = tl.minimum(tl.maximum(tl.load(len_ptr + b), 0), L).to(tl.int32)
    start = ch * CHUNK
    end = tl.minimum(start + CHUNK, n_valid)
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cc < C
    rows = b * C + cc
    da = tl.arange(0, DA_P)
    damask = da < DA
    q = tl.load(q_ptr + rows[:, None] * DA + da[None, :], mask=cmask[:, None] & damask[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    row0 = b * L
    if DIRECT:                                                     # chunk == one sub-tile: select directly
        best = _topk(_sub_keys(q, k_ptr, row0, start, end, da, damask, DA, SUB, UPCAST, PREC, USE_DOT), KP, INTERP)
    else:
        # pass A (fp32): maxima of SUB disjoint groups (column j of every sub-tile) -> threshold
        gmax = tl.full((BLOCK_C, SUB), float("-inf"), tl.float32)
        for l0 in range(start, end, SUB):
            sc, ll = _sub_scores(q, k_ptr, row0, l0, end, da, damask, DA, SUB, UPCAST, PREC, USE_DOT)
            gmax = tl.maximum(gmax, sc)
        thr = tl.min(_topk(gmax, KP, INTERP), axis=1)                 # KP-th largest group max
        # pass B (fp32): compact (score, position) of every score >= thr into this (candidate, chunk)'s
        # scratch row; only those few get packed into int64 keys, after the reload
        base = (rows * NCH + ch)[:, None] * CAP
        cnt = tl.zeros((BLOCK_C,), tl.int32)
        for l0 in range(start, end, SUB):
            sc, ll = _sub_scores(q, k_ptr, row0, l0, end, da, damask, DA, SUB, UPCAST, PREC, USE_DOT)
            sel = (sc >= thr[:, None]) & (ll < end)[None, :] & cmask[:, None]
            sel_i = sel.to(tl.int32)
            rank = cnt[:, None] + tl.cumsum(sel_i, axis=1) - 1
            smask = sel & (rank < CAP)
            tl.store(scr_ptr + base + rank, sc, mask=smask)
            tl.store(pos_ptr + base + rank, ll[None, :] + 0 * rank, mask=smask)
            cnt += tl.sum(sel_i, axis=1)
        tl.debug_barrier()
        if tl.max(cnt, axis=0) <= CAP:
            slots = tl.arange(0, CAP)
            live = slots[None, :] < cnt[:, None]
            ts = tl.load(scr_ptr + base + slots[None, :], mask=live, other=0.0)
            tp = tl.load(pos_ptr + base + slots[None, :], mask=live, other=0)
            best = _topk(tl.where(live, _pack(ts, tp), _NEG), KP, INTERP)
        else:                                                          # exact fallback (ties / adversarial)
            best = tl.full((BLOCK_C, KP), _NEG, tl.int64)
            for l0 in range(start, end, SUB):
                key = _sub_keys(q, k_ptr, row0, l0, end, da, damask, DA, SUB, UPCAST, PREC, USE_DOT)
                both = tl.reshape(tl.join(best, _topk(key, KP, INTERP)), (BLOCK_C, 2 * KP))
                best = _topk(both, KP, INTERP)
    if FINAL:
        _store_final(best, os_ptr, oi_ptr, rows, cmask, K, KP)
    else:
        kk = tl.arange(0, KP)
        tl.store(part_ptr + (rows * NCH + ch)[:, None] * KP + kk[None, :], best, mask=cmask[:, None])


@triton.jit(do_not_specialize=["C", "K", "NCH"])
def _merge_kernel(part_ptr, os_ptr, oi_ptr, C, K, NCH, KP: tl.constexpr, W: tl.constexpr, BLOCK_C: tl.constexpr,
                  INTERP: tl.constexpr):
    """Per candidate: top KP over its NCH chunk lists (W = pow2(NCH) * KP columns)."""
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cc < C
    rows = b * C + cc
    cols = tl.arange(0, W)
    tile = tl.load(part_ptr + rows[:, None] * (NCH * KP) + cols[None, :],
                   mask=cmask[:, None] & (cols[None, :] < NCH * KP), other=_NEG)
    _store_final(_topk(tile, KP, INTERP), os_ptr, oi_ptr, rows, cmask, K, KP)


def topk_target_search_triton(queries: torch.Tensor, keys: torch.Tensor, lengths: torch.Tensor, k: int,
                              config: SearchConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """queries [B,C,da], keys [B,L,da], lengths [B] -> (scores [B,C,k] f32, indices [B,C,k] i64).
    `config` overrides the shape-class rule (kernels.triton.configs.search_config)."""
    check_cuda_or_interp(queries, keys, lengths)
    b, c, da = queries.shape
    l = keys.shape[1]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if l >= 2**31 - 1:
        raise ValueError(f"history length {l} does not fit the packed int32 position")
    dev = queries.device
    out_s = torch.empty((b, c, k), dtype=torch.float32, device=dev)
    out_i = torch.empty((b, c, k), dtype=torch.int64, device=dev)
    if b == 0 or c == 0:
        return out_s, out_i
    kp = search_kp(k)
    cfg = config or search_config(b, c, l, k, sm_count(dev))
    dtype = torch.promote_types(queries.dtype, keys.dtype)
    upcast, prec = dot_mode(dtype)
    final = cfg.n_chunks == 1
    direct = cfg.chunk == cfg.sub
    n_scr = 1 if direct else b * c * cfg.n_chunks * cfg.cap
    scratch = torch.empty((n_scr,), dtype=torch.float32, device=dev)
    scratch_pos = torch.empty((n_scr,), dtype=torch.int32, device=dev)
    part = torch.empty((1 if final else b * c * cfg.n_chunks * kp,), dtype=torch.int64, device=dev)
    grid = (triton.cdiv(c, cfg.block_c), cfg.n_chunks, b)
    _chunk_topk_kernel[grid](queries.to(dtype).contiguous(), keys.to(dtype).contiguous(),
                             lengths.contiguous().to(torch.int64), part, scratch, scratch_pos, out_s, out_i,
                             c, l, da, k, cfg.chunk, cfg.n_chunks, DA_P=pow2(da, 16), KP=kp, SUB=cfg.sub,
                             CAP=cfg.cap, BLOCK_C=cfg.block_c, UPCAST=upcast, PREC=prec, USE_DOT=cfg.use_dot,
                             DIRECT=direct, FINAL=final, INTERP=interpreting(),
                             num_warps=cfg.num_warps)
    if not final:
        mb = cfg.merge_block_c
        _merge_kernel[(triton.cdiv(c, mb), b)](part, out_s, out_i, c, k, cfg.n_chunks, KP=kp,
                                               W=pow2(cfg.n_chunks) * kp, BLOCK_C=mb, INTERP=interpreting(),
                                               num_warps=4)
    return out_s, out_i
