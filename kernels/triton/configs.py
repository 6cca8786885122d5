"""Fixed launch configurations per shape class (no autotuning on the request path).

Every Triton launcher asks here for its block sizes. The rules depend only on coarse shape
classes (power-of-two k, candidates >= 16 or not, the device's multiprocessor count), so the set
of compiled variants is small and known in advance: `kernels.warmup` compiles all of them at
start, and a request at a new history length compiles nothing (lengths are runtime arguments,
`do_not_specialize`). Callers (benchmarks, tests) may pass an explicit config to try others.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from kernels.triton._common import pow2

_WAVES = 4  # aim for about this many programs per multiprocessor


@dataclass(frozen=True)
class SearchConfig:
    """Top-k search launch: BLOCK_C candidates x a chunk of `chunk` positions per program, scored
    SUB positions at a time; `cap` = scratch slots per (candidate, chunk) for the keys passing the
    chunk's threshold; `merge_block_c` = candidates per program of the merge kernel."""

    block_c: int
    sub: int
    cap: int
    chunk: int
    n_chunks: int
    use_dot: bool
    num_warps: int
    merge_block_c: int


def search_kp(k: int) -> int:
    """Register slots for k results: next power of two, at least 2 (tl.topk needs k >= 2 on older Triton)."""
    return pow2(k, 2)


@functools.lru_cache(maxsize=4096)
def search_config(b: int, c: int, l: int, k: int, sms: int, *, block_c: int | None = None,
                  sub: int | None = None, min_subs_per_chunk: int | None = None,
                  num_warps: int | None = None) -> SearchConfig:
    """The split-K plan: enough (candidate block, chunk) programs to fill the device, each chunk at
    least `min_subs_per_chunk` sub-tiles long (default: 1024 positions, so the group-max threshold
    filters well; H200 sweep, benchmarks/results/kernels_h200_sweep.json). Batches that fill the
    device without splitting take 32 candidates per program (10.4 vs 14.0 ms at B=256 in that sweep)."""
    kp = search_kp(k)
    use_dot = c > 4
    big = b * -(-c // 32) >= _WAVES * sms
    bc = block_c or ((32 if big else 16) if use_dot else 1)
    n_cblk = -(-c // bc)
    if not use_dot and sub is None and -(-l // max(2 * kp, 512)) <= 64:
        sb = max(2 * kp, 512)                         # few candidates: one sub-tile per chunk (direct)
        n_chunks = max(1, -(-l // sb))
        return SearchConfig(block_c=bc, sub=sb, cap=sb, chunk=sb, n_chunks=n_chunks, use_dot=False,
                            num_warps=num_warps or 8, merge_block_c=_merge_bc(kp, n_chunks))
    sb = sub or max(2 * kp, 32 if use_dot else 128)
    min_subs_per_chunk = min_subs_per_chunk or max(1, 1024 // sb)
    want = max(1, -(-(_WAVES * sms) // max(1, b * n_cblk)))
    max_chunks = max(1, -(-l // (min_subs_per_chunk * sb)))
    n_chunks = max(1, min(want, max_chunks))
    chunk = -(-max(l, 1) // n_chunks)
    chunk = -(-chunk // sb) * sb
    n_chunks = max(1, -(-max(l, 1) // chunk))
    nw = num_warps or (4 if sb * bc <= 4096 else 8)
    return SearchConfig(block_c=bc, sub=sb, cap=sb, chunk=chunk, n_chunks=n_chunks, use_dot=use_dot,
                        num_warps=nw, merge_block_c=_merge_bc(kp, n_chunks))


def _merge_bc(kp: int, n_chunks: int) -> int:
    """Candidates per merge program: keep the [BLOCK_C, pow2(n_chunks) * KP] key tile <= 4096."""
    return max(1, min(4, 4096 // (kp * pow2(n_chunks))))


def rows_block(n_rows_total: int, sms: int, lo: int = 1, hi: int = 64) -> int:
    """Rows per program for row-parallel kernels: the largest power of two in [lo, hi] that still
    gives about _WAVES programs per multiprocessor."""
    target = max(1, n_rows_total // (_WAVES * sms))
    return max(lo, min(hi, pow2(target) if target > 1 else 1))


# ---------------------------------------------------------------- SDIM bucket table
TABLE_PATHS = ("packed", "dense")


@dataclass(frozen=True)
class TableLayout:
    """How the packed table kernel reads codes: each code is `field` bits of a 32-bit word (one word =
    `cpw` signatures = one accumulator of cpw*nb_p one-hot rows), `words` (1 or 2) words per program,
    buckets padded to nb_p (padding rows are never written)."""

    nb_p: int
    field: int
    cpw: int
    words: int


def table_layout(s: int, nb: int) -> TableLayout | None:
    """The packed layout for S signatures of nb buckets; None when nb > 256 (one signature's one-hot
    would not fit an accumulator; the dense path takes those)."""
    nb_p = pow2(nb, 2)
    if nb_p > 256:
        return None
    field = pow2(nb_p.bit_length() - 1)                   # bits per code, a power of two (4 for 16 buckets)
    cpw = max(1, min(32 // field, 256 // nb_p, pow2(s)))
    if cpw * nb_p < 16:                                   # tl.dot needs M >= 16: pad the buckets
        nb_p = 16 // cpw
        field = pow2(nb_p.bit_length() - 1)
        cpw = max(1, min(32 // field, 256 // nb_p, pow2(s)))
    return TableLayout(nb_p=nb_p, field=field, cpw=cpw, words=2 if s > cpw else 1)


@dataclass(frozen=True)
class TableConfig:
    """SDIM table build launch. path "packed" (default): `_table_packed_kernel`, one program per
    (signature group x d-block, chunk of `chunk` positions, user), `block_l` rows per step.
    path "dense": the previous all-signature one-hot kernel with its own fixed rule (the other
    fields are ignored); kept so a GPU run can A/B both. n_chunks > 1: partial tables summed on
    the host in a fixed order (deterministic)."""

    path: str
    block_l: int
    block_d: int
    chunk: int
    n_chunks: int
    num_warps: int


@functools.lru_cache(maxsize=4096)
def table_config(b: int, l: int, d: int, s: int, nb: int, sms: int, *, path: str = "packed",
                 block_l: int | None = None, block_d: int | None = None, n_chunks: int | None = None,
                 num_warps: int | None = None) -> TableConfig:
    """Default plan: 64-row steps and 8 warps (124 registers in an offline sm_90a build: two programs
    per multiprocessor), accumulators of at most 8192 fp32 per program, and enough history chunks
    (each >= 1024 positions) for about _WAVES programs per multiprocessor."""
    if path not in TABLE_PATHS:
        raise ValueError(f"path must be one of {TABLE_PATHS}, got {path!r}")
    lay = table_layout(s, nb)
    if lay is None:
        path = "dense"
    bl = block_l or 64
    rows = (lay.cpw * lay.nb_p * lay.words) if lay else 256
    bd = block_d or max(16, min(pow2(d, 16), 128, 1 << max(4, (8192 // rows).bit_length() - 1)))
    groups = -(-s // (lay.cpw * lay.words)) if lay else 1
    progs = max(1, b * groups * -(-d // bd))
    nch = n_chunks or max(1, min(-(-(_WAVES * sms) // progs), l // 1024))
    chunk = -(-max(l, 1) // nch)
    chunk = -(-chunk // bl) * bl
    return TableConfig(path=path, block_l=bl, block_d=bd, chunk=chunk, n_chunks=max(1, -(-max(l, 1) // chunk)),
                       num_warps=num_warps or 8)
