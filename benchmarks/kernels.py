"""Benchmark of the retrieval-stage ops (issue 7): ms (median), GB/s or TFLOP/s, ratio to the eager
PyTorch reference and to torch.compile of it, and ratio to the memory floor (bytes that must be
read/written once over the measured device copy bandwidth).

On a GPU: the Triton path (kernels.ops on CUDA tensors) over the full grid B in {1,256},
L in {1k,4k,16k,64k}, C in {64,512,2048}, da in {16,32,64}, full and ragged lengths (cases whose
eager reference would not fit in memory report the reference as None).
Without a GPU: the reference path on CPU over a reduced grid, every row saying so; the Triton
kernels are only checked for correctness (tests, interpreter), never timed on CPU.

    .venv/bin/python -m benchmarks.kernels --quick      # CPU, about a minute
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from benchmarks.results import row, write_rows
from kernels import ops
from kernels.reference import sdim_table as ref_sdim
from kernels.reference import topk_search as ref_topk

K = 64          # retrieved positions per candidate (TWIN/DARE)
S, TAU = 16, 4  # SDIM signatures and bits per signature (16 buckets)
DR = 64         # representation width gathered by topk_aggregate


def bench(fn: Callable[[], object], cuda: bool, reps: int) -> float:
    """Median ms: CUDA events via triton.testing.do_bench on the GPU, perf_counter on CPU."""
    if cuda:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, cuda: bool) -> float:
    """Measured copy bandwidth in GB/s (bytes read + bytes written)."""
    x = torch.empty(256 * 2**20 if cuda else 32 * 2**20, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x), cuda, 5)
    return 2 * x.numel() / ms / 1e6


def lengths_for(b: int, l: int, ragged: bool, device) -> torch.Tensor:
    if not ragged:
        return torch.full((b,), l, dtype=torch.int64, device=device)
    g = torch.Generator().manual_seed(0)            # long-tailed: uniform in [1, L]
    return torch.randint(1, l + 1, (b,), generator=g).to(device)


def grid(cuda: bool, quick: bool):
    if cuda:
        for b in (1, 256):
            for l in (1024, 4096, 8192, 16384, 65536):
                for c in (64, 512, 2048):
                    for da in (16, 32, 64):
                        for ragged in (False, True):
                            if b * c * l > 2**34:
                                continue                      # skip: even the outputs' working set is silly
                            yield b, l, c, da, ragged
    else:
        sizes = [(1, 1024, 64, 32), (1, 4096, 256, 32)] if quick else [
            (1, 1024, 64, 16), (1, 1024, 512, 32), (1, 4096, 512, 32), (1, 8192, 512, 32), (4, 4096, 512, 64)]
        for b, l, c, da in sizes:
            for ragged in (False, True):
                yield b, l, c, da, ragged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small grid (CPU: about a minute)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    args = p.parse_args(argv)
    torch.set_num_threads(1) if not torch.cuda.is_available() else None
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    reps = 3 if args.quick else 5
    bw = copy_bandwidth(device, cuda)
    path = "triton (kernels.ops on CUDA)" if cuda else "reference (kernels.ops on CPU; NO GPU here, Triton not timed)"
    base = "retrieval-stage kernels, synthetic N(0,1) inputs, median of runs"
    command = ".venv/bin/python -m benchmarks.kernels" + (" --quick" if args.quick else "")
    rows = []
    compiled = {}
    if not args.no_compile:
        compiled["search"] = torch.compile(ref_topk.topk_target_search, dynamic=False)
    for b, l, c, da, ragged in grid(cuda, args.quick):
        g = torch.Generator().manual_seed(0)
        q = torch.randn(b, c, da, generator=g).to(device)
        keys = torch.randn(b, l, da, generator=g).to(device)
        lengths = lengths_for(b, l, ragged, device)
        n_valid = int(lengths.sum())
        case = f"B={b} L={l} C={c} da={da} {'ragged' if ragged else 'full'}"
        proto = f"{base}; {case}; k={K}; path={path}"

        # --- topk_target_search
        ms = bench(lambda: ops.topk_target_search(q, keys, lengths, K), cuda, reps)
        flops = 2.0 * c * n_valid * da
        floor_ms = (q.numel() * q.element_size() + n_valid * da * 4 + b * c * K * 12) / bw / 1e6
        ref_ms = comp_ms = None
        try:
            if cuda:  # on CPU the op IS the reference: no self-ratio
                ref_ms = bench(lambda: ref_topk.topk_target_search(q, keys, lengths, K), cuda, reps)
            if "search" in compiled:
                comp_ms = bench(lambda: compiled["search"](q, keys, lengths, K), cuda, reps)
        except torch.OutOfMemoryError:
            pass
        rows.append(row(name="topk_target_search", model="twin/dare", dataset="synthetic", protocol=proto,
                        metric="ms", value=round(ms, 4), reference=None if ref_ms is None else round(ref_ms, 4),
                        ratio=None if ref_ms is None else round(ref_ms / ms, 3), device=None, seed=0, command=command))
        rows.append(row(name="topk_target_search", model="twin/dare", dataset="synthetic", protocol=proto,
                        metric="TFLOP/s", value=round(flops / ms / 1e9, 4), device=None, seed=0, command=command))
        rows.append(row(name="topk_target_search", model="twin/dare", dataset="synthetic", protocol=proto,
                        metric="ms / memory-floor ms", value=round(ms / floor_ms, 2), reference=round(floor_ms, 5),
                        device=None, seed=0, command=command))
        if comp_ms is not None:
            rows.append(row(name="topk_target_search", model="twin/dare", dataset="synthetic", protocol=proto,
                            metric="torch.compile(reference) ms / this ms", value=round(comp_ms / ms, 3),
                            reference=round(comp_ms, 4), device=None, seed=0, command=command))

        # --- topk_aggregate (serving-size forward) and the whole stage at B=1
        s, i = ops.topk_target_search(q, keys, lengths, K)
        values = torch.randn(b, l, DR, generator=g).to(device)
        ms_agg = bench(lambda: ops.topk_aggregate(s, i, values), cuda, reps)
        rows.append(row(name="topk_aggregate", model="twin/dare", dataset="synthetic", protocol=proto + f"; dr={DR}",
                        metric="ms", value=round(ms_agg, 4), device=None, seed=0, command=command))
        if b == 1:
            ms_stage = bench(lambda: ops.topk_aggregate(*ops.topk_target_search(q, keys, lengths, K), values), cuda, reps)
            rows.append(row(name="retrieval_stage_search+aggregate", model="twin/dare", dataset="synthetic",
                            protocol=proto + f"; dr={DR}; target <= 1 ms at B=1 L=8k C=512 on H100/H200",
                            metric="ms", value=round(ms_stage, 4), device=None, seed=0, command=command))

        # --- SDIM table build (history width = da) + gather
        hist = keys
        codes = ops.simhash_codes(hist, torch.randn(da, S * TAU, generator=g).to(device), TAU)
        ms_tab = bench(lambda: ops.sdim_bucket_table(hist, codes, lengths, 2**TAU), cuda, reps)
        tab_bytes = n_valid * (da * hist.element_size() + S * 8) + b * S * 2**TAU * da * 4
        tab_floor = tab_bytes / bw / 1e6
        rows.append(row(name="sdim_bucket_table", model="sdim", dataset="synthetic", protocol=proto + f"; S={S} tau={TAU}",
                        metric="GB/s", value=round(tab_bytes / ms_tab / 1e6, 3), device=None, seed=0, command=command))
        rows.append(row(name="sdim_bucket_table", model="sdim", dataset="synthetic", protocol=proto + f"; S={S} tau={TAU}; target <= 2x floor on GPU",
                        metric="ms / memory-floor ms", value=round(ms_tab / tab_floor, 2), reference=round(tab_floor, 5),
                        device=None, seed=0, command=command))
        print(f"{case:40s} search {ms:9.3f} ms  compile {comp_ms}  agg {ms_agg:8.3f} ms  table {ms_tab:8.3f} ms", flush=True)

    for what, target in [("topk_target_search", "eager/this >= 5 and compile/this >= 2 at B=256 L=8k C=512 da=32"),
                         ("sdim_bucket_table", "ms <= 2x memory floor"),
                         ("retrieval_stage_search+aggregate", "<= 1 ms at B=1 L=8k C=512")]:
        rows.append(row(name=what, model=None, dataset="synthetic",
                        protocol=f"TARGET on H100/H200: {target}; " + ("measured above" if cuda else "NOT MEASURED: no GPU in this session"),
                        metric="target", value=None, device=None, seed=0, command=command))
    out = write_rows("kernels", rows)
    print(f"wrote {out} ({len(rows)} rows); copy bandwidth {bw:.1f} GB/s; device path: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
