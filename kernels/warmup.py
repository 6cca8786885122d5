"""Compile every Triton kernel variant a serving process will launch, before the first request.

No kernel autotunes (kernels/triton/configs.py picks block sizes by shape class) and sizes are
runtime arguments (`do_not_specialize`), so the variants depend only on: dtype, k, the attention
and value widths, whether there are enough candidates for a tl.dot (C > 4), and - for the top-k
search - how many chunks one history is split into (a power of two per history-length bucket).
`warmup` runs the ops once per history-length bucket up to `max_history` for each batch size and
candidate count given, and compiles the merge kernel for every chunk count a length up to
`max_history` can produce at any batch size, so the first real call at any length costs a launch,
not a compile (measured: benchmarks/kernels.py --targets, "first call" rows).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from kernels import ops


@dataclass(frozen=True)
class WarmupSpec:
    """What to compile (all tuples: every combination is warmed)."""

    device: str = "cuda"
    max_history: int = 8192
    batch_sizes: tuple[int, ...] = (1,)
    candidates: tuple[int, ...] = (1, 512)
    k: tuple[int, ...] = (64,)
    da: tuple[int, ...] = (32,)
    dr: tuple[int, ...] = (64,)
    dtypes: tuple[torch.dtype, ...] = (torch.float32,)
    sdim: tuple[tuple[int, int, int], ...] = ()      # (d, S, tau) of SDIM tables to warm


def length_buckets(max_history: int) -> list[int]:
    """History lengths that reach every length bucket (chunk count) up to `max_history`."""
    out, n = [], 16
    while n < max_history:
        out += [n, n + n // 2 + 1]
        n *= 2
    return [n for n in out if n < max_history] + [max_history]  # never longer than max_history


def _warm_variants(spec: WarmupSpec, device: torch.device) -> None:
    """Variants that depend on the batch size: every chunk count up to the max for max_history
    (the merge kernel's width) and every aggregate BLOCK_C."""
    from kernels.triton._common import pow2, sm_count
    from kernels.triton.configs import search_config
    from kernels.triton.search import topk_target_search_triton
    from kernels.triton.topk import agg_block_c_choices, topk_aggregate_triton

    for dtype in spec.dtypes:
        for k in spec.k:
            for dr in spec.dr:
                s = torch.randn(1, 64, k, device=device)
                i = torch.randint(0, 8, (1, 64, k), device=device)
                for bc in agg_block_c_choices(k, dr):
                    topk_aggregate_triton(s, i, torch.randn(1, 8, dr, device=device, dtype=dtype), block_c=bc)

    for dtype in spec.dtypes:
        for k in spec.k:
            for da in spec.da:
                for c in sorted({min(c, 16) if c > 4 else 1 for c in spec.candidates}):
                    top = search_config(1, c, spec.max_history, k, sm_count(device))
                    n = 2
                    while n <= pow2(top.n_chunks):
                        cfg = search_config(1, c, n * top.sub, k, 10**6, min_subs_per_chunk=1)
                        q = torch.randn(1, c, da, device=device, dtype=dtype)
                        keys = torch.randn(1, n * top.sub, da, device=device, dtype=dtype)
                        topk_target_search_triton(q, keys, torch.tensor([keys.shape[1]], device=device), k, cfg)
                        n *= 2


def warmup(spec: WarmupSpec) -> dict[str, float]:
    """Compile (and run once) every variant `spec` implies; returns seconds spent per op family."""
    device = torch.device(spec.device)
    g = torch.Generator().manual_seed(0)
    spent = {"search+aggregate": 0.0, "variants": 0.0, "sdim": 0.0}
    t0 = time.perf_counter()
    for dtype in spec.dtypes:
        for b in spec.batch_sizes:
            for l in length_buckets(spec.max_history):
                for da in spec.da:
                    keys = torch.randn(b, l, da, generator=g).to(device, dtype)
                    lengths = torch.full((b,), l, dtype=torch.int64, device=device)
                    for c in spec.candidates:
                        q = torch.randn(b, c, da, generator=g).to(device, dtype)
                        for k in spec.k:
                            s, i = ops.topk_target_search(q, keys, lengths, k)
                            for dr in spec.dr:
                                ops.topk_aggregate(s, i, torch.randn(b, l, dr, generator=g).to(device, dtype))
    spent["search+aggregate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _warm_variants(spec, device)
    spent["variants"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for d, s_, tau in spec.sdim:
        proj = torch.randn(d, s_ * tau, generator=g).to(device)
        for dtype in spec.dtypes:
            for b in spec.batch_sizes:
                for l in length_buckets(spec.max_history):
                    hist = torch.randn(b, l, d, generator=g).to(device, dtype)
                    codes = ops.simhash_codes(hist, proj, tau)
                    table = ops.sdim_bucket_table(hist, codes, torch.full((b,), l, device=device), 2**tau)
                    for c in spec.candidates:
                        cand = ops.simhash_codes(torch.randn(b, c, d, generator=g).to(device, dtype), proj, tau)
                        ops.sdim_gather(table, cand)
    spent["sdim"] = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return spent
