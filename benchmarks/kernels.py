"""Benchmark of the retrieval-stage ops (issue 7): ms (median), GB/s or TFLOP/s, ratio to the eager
PyTorch reference and to torch.compile of it, and ratio to the memory floor (bytes that must be
read/written once over the measured device copy bandwidth).

On a GPU: the Triton path (kernels.ops on CUDA tensors) over the full grid B in {1,256},
L in {1k,4k,16k,64k}, C in {64,512,2048}, da in {16,32,64}, full and ragged lengths (cases whose
eager reference would not fit in memory report the reference as None).
Without a GPU: the reference path on CPU over a reduced grid, every row saying so; the Triton
kernels are only checked for correctness (tests, interpreter), never timed on CPU.

    .venv/bin/python -m benchmarks.kernels --quick      # CPU, about a minute
    python -m benchmarks.kernels --targets              # GPU: the issue-15 target rows (kernels_h200.json)
    python -m benchmarks.kernels --targets --sdim       # GPU: SDIM rows only, both table paths + config sweep
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


# ---------------------------------------------------------------- issue 15 targets (--targets)
TARGET_CMD = "TRITON_INTERPRET=0 PYTHONPATH=. python3 -m benchmarks.kernels --targets --out benchmarks/results/kernels_h200.json"
SDIM_CMD = "TRITON_INTERPRET=0 PYTHONPATH=. python3 -m benchmarks.kernels --targets --sdim --out benchmarks/results/kernels_h200_sdim.json"
SEARCH_CASES = [  # (B, L, C, da, k, dtype, target eager/ours)
    (1, 8192, 512, 32, 64, torch.float32, 5.0),
    (1, 8192, 512, 32, 20, torch.float32, 5.0),
    (1, 65536, 512, 32, 64, torch.float32, 5.0),
    (2048, 2048, 1, 32, 20, torch.float32, 3.0),
    (2048, 2048, 1, 32, 64, torch.float32, 3.0),
    (256, 8192, 512, 32, 64, torch.float32, 10.0),
    (256, 8192, 512, 32, 64, torch.bfloat16, 10.0),
]


def eager_search(q: torch.Tensor, keys: torch.Tensor, lengths: torch.Tensor, k: int):
    """The simple reference the targets compare against: matmul + masked_fill + torch.topk."""
    s = torch.matmul(q, keys.transpose(1, 2))
    valid = torch.arange(keys.shape[1], device=keys.device)[None, :] < lengths[:, None]
    return torch.topk(s.masked_fill(~valid[:, None, :], float("-inf")), k, dim=-1)


def _trow(rows: list, name: str, proto: str, metric: str, value, reference=None, ratio=None, command=None) -> None:
    r = lambda v, n=4: None if v is None else round(float(v), n)  # noqa: E731
    rows.append(row(name=name, model="twin/dare", dataset="synthetic", protocol=proto, metric=metric,
                    value=r(value), reference=r(reference), ratio=r(ratio, 3), device=None, seed=0,
                    command=command or TARGET_CMD))


def _graph_ms(fn: Callable[[], object]) -> float | None:
    """Median ms of a CUDA-graph replay of fn (launch overhead removed); None if capture fails."""
    import triton.testing

    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return float(triton.testing.do_bench(graph.replay, warmup=25, rep=100, return_mode="median"))
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        print(f"graph capture failed: {exc!r}")
        return None


def _agree(ours, eager) -> float:
    """Fraction of candidates whose top-k index SET equals eager topk's (near-ties may differ)."""
    a = ours[1].sort(-1).values
    b = eager[1].sort(-1).values
    return float((a == b).all(-1).float().mean())


def search_targets(rows: list, compiled_ok: set) -> None:
    """Search rows: ours vs eager matmul+topk, torch.compile(eager), the project's reference."""
    for b, l, c, da, k, dtype, target in SEARCH_CASES:
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(b, c, da, device="cuda", generator=g).to(dtype)
        keys = torch.randn(b, l, da, device="cuda", generator=g).to(dtype)
        lengths = torch.full((b,), l, dtype=torch.int64, device="cuda")
        dn = "bf16" if dtype == torch.bfloat16 else "fp32"
        proto = (f"B={b} L={l} C={c} da={da} k={k} {dn} full lengths; N(0,1) inputs; median of "
                 f"triton.testing.do_bench; target eager/ours >= {target}")
        ours = bench(lambda: ops.topk_target_search(q, keys, lengths, k), True, 0)
        eager = bench(lambda: eager_search(q, keys, lengths, k), True, 0)
        agree = _agree(ops.topk_target_search(q, keys, lengths, k), eager_search(q.float(), keys.float(), lengths, k))
        _trow(rows, "topk_target_search", proto, "ms (eager matmul+masked_fill+topk = reference)", ours, eager, eager / ours)
        _trow(rows, "topk_target_search", proto, "index sets equal to fp32 eager topk (fraction of candidates)", agree)
        # every case: the GPU time without Python launch overhead (CUDA-graph replay)
        gms = _graph_ms(lambda: ops.topk_target_search(q, keys, lengths, k))
        _trow(rows, "topk_target_search", proto + "; CUDA-graph replay (no Python launch overhead)",
              "ms (eager = reference)", gms, eager, None if gms is None else eager / gms)
        if b * c * l <= 2**31:
            ref = bench(lambda: ref_topk.topk_target_search(q, keys, lengths, k), True, 0)
            _trow(rows, "topk_target_search", proto, "ms (project reference: full stable sort = reference)", ours, ref, ref / ours)
        key = (b, c)
        if key == (1, 512) and key not in compiled_ok and dtype == torch.float32:  # (compile costs ~30 s)
            compiled_ok.add(key)
            comp = torch.compile(eager_search, dynamic=False)
            cms = bench(lambda: comp(q, keys, lengths, k), True, 0)
            _trow(rows, "topk_target_search", proto, "ms (torch.compile(eager) = reference)", ours, cms, cms / ours)
        print(f"search {proto[:48]:48s} ours {ours:8.4f} eager {eager:8.4f} ratio {eager / ours:6.2f} agree {agree:.4f}", flush=True)


def stage_targets(rows: list) -> None:
    """Search + aggregate at serving size, B=1 L=8192 C=512 da=32 dr=64, k=64 and 20."""
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(1, 512, 32, device="cuda", generator=g)
    keys = torch.randn(1, 8192, 32, device="cuda", generator=g)
    values = torch.randn(1, 8192, DR, device="cuda", generator=g)
    lengths = torch.full((1,), 8192, dtype=torch.int64, device="cuda")
    for k, target in ((64, 0.1), (20, 0.05)):
        proto = f"B=1 L=8192 C=512 da=32 k={k} dr={DR} fp32; search + aggregate; target <= {target} ms"
        fn = lambda: ops.topk_aggregate(*ops.topk_target_search(q, keys, lengths, k), values)  # noqa: E731
        ms = bench(fn, True, 0)
        ef = lambda: ref_topk.topk_aggregate(*eager_search(q, keys, lengths, k), values)  # noqa: E731
        ems = bench(ef, True, 0)
        _trow(rows, "retrieval_stage_search+aggregate", proto, "ms (eager topk + reference aggregate = reference)", ms, ems, ems / ms)
        gms = _graph_ms(fn)
        _trow(rows, "retrieval_stage_search+aggregate", proto + "; CUDA-graph replay", "ms", gms)
        s, i = ops.topk_target_search(q, keys, lengths, k)
        _trow(rows, "topk_aggregate", proto.replace("search + aggregate", "aggregate alone"), "ms",
              bench(lambda: ops.topk_aggregate(s, i, values), True, 0))
        print(f"stage k={k}: {ms:.4f} ms (graph {gms}), eager {ems:.4f}", flush=True)


TABLE_PATHS = [("packed (default)", {}), ("dense (previous kernel)", {"path": "dense"})]
TABLE_SWEEP = [("packed 4 warps block_l 32", {"num_warps": 4, "block_l": 32}), ("packed 4 warps", {"num_warps": 4}),
               ("packed block_l 32", {"block_l": 32}), ("packed block_l 128", {"block_l": 128}),
               ("packed 1 chunk", {"n_chunks": 1}), ("packed 2 chunks", {"n_chunks": 2}),
               ("packed 6 chunks", {"n_chunks": 6}), ("packed 12 chunks", {"n_chunks": 12})]


def table_rows(rows: list, proto: str, floor: float, hist, codes, lengths, ref_out, variants, cmd: str) -> dict:
    """Time the table build per TableConfig variant (the launcher, called directly): rows ms,
    ms / memory floor, relative error vs the reference. Returns {variant name: ms}."""
    from kernels.triton._common import sm_count
    from kernels.triton.configs import table_config
    from kernels.triton.sdim import sdim_bucket_table_triton

    b, l, d = hist.shape
    done = {}
    for name, kw in variants:
        cfg = table_config(b, l, d, S, 2**TAU, sm_count(hist.device), **kw)
        fn = lambda: sdim_bucket_table_triton(hist, codes, lengths, 2**TAU, cfg)  # noqa: E731
        try:
            ms = bench(fn, True, 0)
            err = rel(fn(), ref_out)
        except Exception as exc:  # noqa: BLE001 - a variant that does not compile is a result too
            print(f"table variant {name} {cfg} failed: {exc!r}"[:300], flush=True)
            continue
        p = f"{proto}; path {name}: " + (str(cfg) if cfg.path == "packed" else "its own fixed plan (8 warps, 64-row steps)")
        _trow(rows, "sdim_bucket_table", p + "; target <= 2x floor", "ms / memory-floor ms", ms / floor, floor, command=cmd)
        _trow(rows, "sdim_bucket_table", p, "ms", ms, command=cmd)
        _trow(rows, "sdim_bucket_table", p, "relative error vs reference", err, command=cmd)
        print(f"table {name:28s} {ms:.4f} ms = {ms / floor:.2f}x floor {floor:.4f}; rel err {err:.2e}", flush=True)
        done[name] = ms
    return done


def sdim_targets(rows: list, bw: float, sweep: bool = False) -> None:
    """SDIM table build vs the memory floor (both paths; with `sweep` also packed-config variants, and
    bf16 history), simhash vs the reference, at B=256 L=8192 d=32 S=16 tau=4."""
    b, l, d = 256, 8192, 32
    g = torch.Generator(device="cuda").manual_seed(2)
    hist = torch.randn(b, l, d, device="cuda", generator=g)
    proj = torch.randn(d, S * TAU, device="cuda", generator=g)
    lengths = torch.full((b,), l, dtype=torch.int64, device="cuda")
    codes = ops.simhash_codes(hist, proj, TAU)
    proto = f"B={b} L={l} d={d} S={S} tau={TAU} fp32 history, int64 codes; copy bandwidth {bw:.0f} GB/s measured"
    ms = bench(lambda: ops.sdim_bucket_table(hist, codes, lengths, 2**TAU), True, 0)
    floor = (hist.numel() * 4 + codes.numel() * 8 + b * S * 2**TAU * d * 4) / bw / 1e6
    ref = bench(lambda: ref_sdim.sdim_bucket_table(hist, codes, lengths, 2**TAU), True, 0)
    ref_out = ref_sdim.sdim_bucket_table(hist, codes, lengths, 2**TAU)
    exact = rel(ops.sdim_bucket_table(hist, codes, lengths, 2**TAU), ref_out)
    cmd = SDIM_CMD if sweep else TARGET_CMD
    _trow(rows, "sdim_bucket_table", proto + "; kernels.ops (default path); target <= 2x floor", "ms / memory-floor ms",
          ms / floor, floor, command=cmd)
    _trow(rows, "sdim_bucket_table", proto, "ms (project reference = reference)", ms, ref, ref / ms, command=cmd)
    _trow(rows, "sdim_bucket_table", proto, "relative error vs reference", exact, command=cmd)
    done = table_rows(rows, proto, floor, hist, codes, lengths, ref_out, TABLE_PATHS + (TABLE_SWEEP if sweep else []), cmd)
    if len(done) >= 2 and all(n in done for n, _ in TABLE_PATHS):
        (pn, _), (dn, _) = TABLE_PATHS
        _trow(rows, "sdim_bucket_table", f"{proto}; {dn} ms / {pn} ms", "speed-up of the packed path",
              done[dn] / done[pn], command=cmd)
    if sweep:                                     # bf16 history: one bf16 part instead of three
        h16 = hist.to(torch.bfloat16)
        floor16 = (h16.numel() * 2 + codes.numel() * 8 + b * S * 2**TAU * d * 2) / bw / 1e6
        ref16 = ref_sdim.sdim_bucket_table(h16.float(), codes, lengths, 2**TAU)
        table_rows(rows, proto.replace("fp32 history", "bf16 history"), floor16, h16, codes, lengths, ref16, TABLE_PATHS,
                   cmd)
    from kernels.reference import simhash as ref_hash

    hs = bench(lambda: ops.simhash_codes(hist, proj, TAU), True, 0)
    hr = bench(lambda: ref_hash.simhash_codes(hist, proj, TAU), True, 0)
    same = float((ops.simhash_codes(hist, proj, TAU) == ref_hash.simhash_codes(hist, proj, TAU)).float().mean())
    hfloor = (hist.numel() * 4 + codes.numel() * 8) / bw / 1e6
    _trow(rows, "simhash_codes", proto + "; target >= 3x reference", "ms (project reference = reference)", hs, hr, hr / hs,
          command=cmd)
    _trow(rows, "simhash_codes", proto, "ms / memory-floor ms", hs / hfloor, hfloor, command=cmd)
    _trow(rows, "simhash_codes", proto, "codes equal to reference (fraction)", same, command=cmd)
    print(f"sdim table {ms:.4f} ms floor {floor:.4f} ({ms / floor:.2f}x) ref {ref:.4f}; simhash {hs:.4f} ref {hr:.4f}", flush=True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def first_call_targets(rows: list) -> None:
    """Warm-up cost, then the first call at lengths never seen (target <= 100 ms each)."""
    from kernels.warmup import WarmupSpec, warmup

    spec = WarmupSpec(device="cuda", max_history=65536, batch_sizes=(1,), candidates=(1, 512), k=(20, 64),
                      da=(32,), dr=(DR,), sdim=((32, S, TAU),))
    t = time.perf_counter()
    spent = warmup(spec)
    total = time.perf_counter() - t
    _trow(rows, "kernels.warmup", f"{spec}; seconds per family {spent}", "s (one-off at server start)", total)
    worst = 0.0
    for l in (100, 777, 3000, 5000, 12345, 40000, 65536):
        q = torch.randn(1, 512, 32, device="cuda")
        keys = torch.randn(1, l, 32, device="cuda")
        values = torch.randn(1, l, DR, device="cuda")
        torch.cuda.synchronize()
        t = time.perf_counter()
        ops.topk_aggregate(*ops.topk_target_search(q, keys, torch.tensor([l], device="cuda"), 64), values)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t) * 1e3
        worst = max(worst, ms)
        _trow(rows, "first_call_search+aggregate", f"after kernels.warmup; B=1 L={l} C=512 da=32 k=64 dr={DR}; "
              "wall clock incl. synchronize; target <= 100 ms", "ms", ms)
    print(f"warmup {total:.1f} s; worst first call {worst:.2f} ms", flush=True)


def faiss_row(rows: list) -> None:
    try:
        import faiss  # noqa: F401

        gpus = faiss.get_num_gpus()
        note = f"faiss {faiss.__version__} imported, {gpus} GPUs visible; knn_gpu not timed in this version"
    except Exception as exc:  # noqa: BLE001
        note = f"faiss GPU not available on this machine ({exc!r}); no faiss row"
    _trow(rows, "faiss_knn_gpu", "B=1 L=8192 C=512 da=32 k=64", "note: " + note, None)
    print(note, flush=True)


def run_targets(out: str | None, sdim_only: bool = False) -> int:
    """Every issue-15 target row on the GPU (about 3-4 minutes of device time); `sdim_only`: just the
    SDIM section with the table-config sweep and bf16 rows (about a minute; kernels_h200_sdim.json)."""
    if not torch.cuda.is_available():
        raise SystemExit("--targets needs a CUDA GPU (the rows are GPU targets)")
    import json
    from pathlib import Path

    rows: list = []
    name = "kernels_h200_sdim.json" if sdim_only else "kernels_h200.json"
    path = Path(out) if out else Path(__file__).resolve().parent / "results" / name
    bw = copy_bandwidth(torch.device("cuda"), True)
    sections = [lambda: first_call_targets(rows), lambda: search_targets(rows, set()), lambda: stage_targets(rows),
                lambda: sdim_targets(rows, bw), lambda: faiss_row(rows)]
    if sdim_only:
        sections = [lambda: sdim_targets(rows, bw, sweep=True)]
    failed = 0
    for section in sections:                      # rows are written after each section (a timeout keeps them)
        try:
            section()
        except Exception:  # noqa: BLE001 - report, keep measuring the other sections
            import traceback

            traceback.print_exc()
            failed += 1
        path.write_text(json.dumps(rows, indent=1) + "\n")
    path.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {path} ({len(rows)} rows); {failed} sections failed")
    return 1 if failed else 0


def sweep(out: str | None) -> None:
    """Time top-k search config variants (explicit configs; the shipped rule is search_config) at the
    serving, training and batched shapes; rows name each config."""
    import json
    from pathlib import Path

    from kernels.triton._common import sm_count
    from kernels.triton.configs import search_config
    from kernels.triton.search import topk_target_search_triton

    sms = sm_count(torch.device("cuda"))
    variants = [dict(), dict(min_subs_per_chunk=4), dict(min_subs_per_chunk=16), dict(block_c=32),
                dict(block_c=32, num_warps=8), dict(block_c=64, num_warps=8), dict(sub=256), dict(num_warps=8)]
    rows: list = []
    for b, l, c, k in ((1, 8192, 512, 64), (1, 8192, 512, 20), (2048, 2048, 1, 20), (256, 8192, 512, 64)):
        q = torch.randn(b, c, 32, device="cuda")
        keys = torch.randn(b, l, 32, device="cuda")
        lengths = torch.full((b,), l, dtype=torch.int64, device="cuda")
        ref = eager_search(q, keys, lengths, k)
        for v in variants:
            if c == 1 and ("block_c" in v or "sub" in v):
                continue
            cfg = search_config(b, c, l, k, sms, **v)
            try:
                ms = bench(lambda: topk_target_search_triton(q, keys, lengths, k, cfg), True, 0)
                agree = _agree(topk_target_search_triton(q, keys, lengths, k, cfg), ref)
            except Exception as exc:  # noqa: BLE001 - a variant that does not compile is a result too
                print(f"variant {cfg} failed: {exc!r}"[:300], flush=True)
                continue
            rows.append(row(name="topk_target_search config sweep", model="twin/dare", dataset="synthetic",
                            protocol=f"B={b} L={l} C={c} da=32 k={k} fp32; {cfg}", metric="ms", value=round(ms, 4),
                            reference=round(float(agree), 4), device=None, seed=0,
                            command=TARGET_CMD.replace("--targets", "--targets --sweep")))
            print(f"sweep B={b} L={l} C={c} k={k} {v}: {ms:.4f} ms agree {agree:.4f}", flush=True)
    path = Path(out) if out else Path(__file__).resolve().parent / "results" / "kernels_h200_sweep.json"
    path.write_text(json.dumps(rows, indent=1) + "\n")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small grid (CPU: about a minute)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--targets", action="store_true", help="issue-15 target rows on the GPU")
    p.add_argument("--sweep", action="store_true", help="with --targets: also time search config variants")
    p.add_argument("--sdim", action="store_true", help="with --targets: only the SDIM rows, both table paths, "
                   "the packed-config sweep and bf16 history (default out results/kernels_h200_sdim.json)")
    p.add_argument("--out", default=None, help="--targets: JSON path (default results/kernels_h200.json)")
    return p.parse_args(argv)


def _target_notes(rows: list, cuda: bool, command: str) -> None:
    """One row per issue target, saying whether this run measured it."""
    for what, target in [("topk_target_search", "eager/this >= 5 and compile/this >= 2 at B=256 L=8k C=512 da=32"),
                         ("sdim_bucket_table", "ms <= 2x memory floor"),
                         ("retrieval_stage_search+aggregate", "<= 1 ms at B=1 L=8k C=512")]:
        rows.append(row(name=what, model=None, dataset="synthetic",
                        protocol=f"TARGET on H100/H200: {target}; " + ("measured above" if cuda else "NOT MEASURED: no GPU in this session"),
                        metric="target", value=None, device=None, seed=0, command=command))


def _targets_main(args: argparse.Namespace) -> int:
    """--targets [--sweep | --sdim]: the GPU target rows."""
    rc = run_targets(args.out, sdim_only=args.sdim)
    if args.sweep and not args.sdim:
        sweep(args.out.replace(".json", "_sweep.json") if args.out else None)
    return rc


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.targets:
        return _targets_main(args)
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

    _target_notes(rows, cuda, command)
    out = write_rows("kernels", rows)
    print(f"wrote {out} ({len(rows)} rows); copy bandwidth {bw:.1f} GB/s; device path: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
