"""Padded against jagged-equivalent retrieval search on a long-tailed batch (issue 15: "where it
pays, the ops take jagged histories natively instead of padding a ragged batch to its longest
user; measure padded against jagged on a long-tailed batch").

The project's contract today is "jagged at rest, padded in compute": histories are stored as values +
offsets and padded to the batch's longest row before `kernels.ops` (padded [B, L] + lengths), so the
op's work grows with B x longest. This measures what a jagged-native op could save,
without writing one: the same batch searched
- padded: pad the jagged keys to the longest user, one `ops.topk_target_search` call;
- bucketed (jagged-equivalent): users grouped by power-of-two length (lengths <= 64 in one
  group), each group padded to its own longest and searched in its own call, results scattered
  back; work ~ the sum of lengths (at most ~2x), which is what a jagged-native op would do.
Both start from the same jagged keys (values [sum L, da] + offsets), so "from jagged" times include
building the padded tensors (the bucket plan - rows and gather positions - is built once, as a
jagged op would read them from the offsets); "op only" times the op calls on pre-built tensors.
The results must agree (same indices; the row says what fraction did).

Lengths: log-normal with median `--median` and sigma set so that the expected longest of B users is
`--longest`; the longest user is set to exactly `--longest`.

    .venv/bin/python -m benchmarks.jagged_vs_padded                                   # CPU row, < 2 min
    TRITON_INTERPRET=0 PYTHONPATH=. python3 -m benchmarks.jagged_vs_padded --device cuda --cands 1,512
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks.common import median_seconds
from benchmarks.results import command_line, row, write_rows_to
from kernels import ops


def long_tailed_lengths(b: int, median: int, longest: int, seed: int) -> np.ndarray:
    """B log-normal lengths in [1, longest], median ~`median`, the longest exactly `longest`."""
    z = statistics.NormalDist().inv_cdf(1 - 1 / (b + 1))  # expected max of B standard normals, roughly
    sigma = np.log(longest / median) / z
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(rng.lognormal(np.log(median), sigma, b)), 1, longest).astype(np.int64)
    lengths[np.argmax(lengths)] = longest
    return lengths


@dataclass
class Bucket:
    """One length group: its rows, its padded width, and where its padded slots read the values."""

    rows: torch.Tensor  # [n] batch rows
    width: int
    mask: torch.Tensor  # [n, width] valid slots
    src: torch.Tensor  # [mask.sum()] positions in the jagged values
    lengths: torch.Tensor  # [n]


def bucket_plan(offsets: torch.Tensor, min_width: int = 64) -> list[Bucket]:
    """Users grouped by ceil(log2(length)) (lengths <= min_width together), each padded to its longest."""
    lengths = offsets[1:] - offsets[:-1]
    groups = torch.clamp(torch.ceil(torch.log2(lengths.clamp_min(1).double())), min=np.log2(min_width)).long()
    plan = []
    for g in torch.unique(groups).tolist():
        rows = torch.nonzero(groups == g).flatten()
        lens = lengths[rows]
        width = int(lens.max())
        pos = torch.arange(width, device=offsets.device)
        mask = pos[None, :] < lens[:, None]
        src = (offsets[rows][:, None] + pos[None, :])[mask]
        plan.append(Bucket(rows, width, mask, src, lens))
    return plan


def pad_to_longest(values: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch as one bucket: keys [B, longest, da] (right-padded) and lengths [B]."""
    rows = torch.arange(offsets.numel() - 1, device=offsets.device)
    lengths = offsets[1:] - offsets[:-1]
    width = int(lengths.max())
    mask = torch.arange(width, device=offsets.device)[None, :] < lengths[:, None]
    src = (offsets[:-1, None] + torch.arange(width, device=offsets.device)[None, :])[mask]
    return bucket_keys(values, [Bucket(rows, width, mask, src, lengths)])[0], lengths


def padded_search(q: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor, k: int):
    keys, lengths = pad_to_longest(values, offsets)
    return ops.topk_target_search(q, keys, lengths, k)


def bucket_keys(values: torch.Tensor, plan: list[Bucket]) -> list[torch.Tensor]:
    """Each bucket's right-padded keys [n, width, da] gathered from the jagged values."""
    out = []
    for bk in plan:
        keys = values.new_zeros(bk.rows.numel(), bk.width, values.shape[1])
        keys[bk.mask] = values[bk.src]
        out.append(keys)
    return out


def bucketed_search(q: torch.Tensor, plan: list[Bucket], keys: list[torch.Tensor], k: int):
    """One op call per bucket, results written back in batch order."""
    b, c, _ = q.shape
    scores = torch.empty(b, c, k, dtype=torch.float32, device=q.device)
    indices = torch.empty(b, c, k, dtype=torch.int64, device=q.device)
    for bk, kb in zip(plan, keys):
        s, i = ops.topk_target_search(q[bk.rows], kb, bk.lengths, k)
        scores[bk.rows], indices[bk.rows] = s, i
    return scores, indices


def ms(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median milliseconds: triton.testing.do_bench (CUDA events) on a GPU, perf_counter on the CPU."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))
    return median_seconds(fn, reps, warmup=1) * 1e3


def measure(c: int, args: argparse.Namespace, lengths: np.ndarray, device: torch.device) -> dict[str, float]:
    """Padded vs bucketed search at C candidates, from jagged and op only, plus index agreement."""
    g = torch.Generator().manual_seed(args.seed)
    b = lengths.size
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)])).to(device)
    values = torch.randn(int(lengths.sum()), args.da, generator=g).to(device)
    q = torch.randn(b, c, args.da, generator=g).to(device)
    plan = bucket_plan(offsets)
    keys_b = bucket_keys(values, plan)
    keys_p, lens_p = pad_to_longest(values, offsets)
    ref, got = padded_search(q, values, offsets, args.k), bucketed_search(q, plan, keys_b, args.k)
    agree = float((ref[1] == got[1]).all(-1).float().mean())
    return {
        "padded": ms(lambda: padded_search(q, values, offsets, args.k), device, args.reps),
        "bucketed": ms(lambda: bucketed_search(q, plan, bucket_keys(values, plan), args.k), device, args.reps),
        "padded_op": ms(lambda: ops.topk_target_search(q, keys_p, lens_p, args.k), device, args.reps),
        "bucketed_op": ms(lambda: bucketed_search(q, plan, keys_b, args.k), device, args.reps),
        "agree": agree, "buckets": len(plan), "slots_padded": b * int(lengths.max()),
        "slots_bucketed": sum(bk.rows.numel() * bk.width for bk in plan),
    }


def rows_of(c: int, res: dict[str, float], args: argparse.Namespace, lengths: np.ndarray, device: torch.device,
            command: str) -> list[dict]:
    """Bucketed vs padded ms from jagged keys and op only (ratio = padded / bucketed), and agreement."""
    path = "Triton kernels (CUDA)" if device.type == "cuda" else "reference op (CPU: matmul + full stable sort)"
    proto = (f"ops.topk_target_search on a long-tailed batch: B={lengths.size} users, log-normal lengths median"
             f" {int(np.median(lengths))}, mean {lengths.mean():.0f}, p90 {int(np.percentile(lengths, 90))}, longest"
             f" {int(lengths.max())}, sum {int(lengths.sum())}; C={c}, da={args.da}, k={args.k}, fp32 N(0,1) keys/queries;"
             f" {path}; padded = padded to the longest ({res['slots_padded']} slots) + one call; bucketed ="
             f" {res['buckets']} power-of-two length groups, each padded to its longest ({res['slots_bucketed']}"
             f" slots), one call each, results scattered back; median of {args.reps if device.type != 'cuda' else 'do_bench'}")
    common = dict(name="jagged_vs_padded", model="twin/dare retrieval stage", dataset="synthetic (generated lengths and keys)",
                  seed=args.seed, command=command)
    r = lambda v: round(float(v), 4)  # noqa: E731
    return [
        row(protocol=proto + "; both from the jagged keys (values + offsets), padding/gathering included",
            metric="ms bucketed (reference: padded to longest; ratio = padded / bucketed)",
            value=r(res["bucketed"]), reference=r(res["padded"]), ratio=r(res["padded"] / res["bucketed"]), **common),
        row(protocol=proto + "; op calls only, on pre-built padded / per-bucket tensors",
            metric="ms op only, bucketed (reference: padded; ratio = padded / bucketed)",
            value=r(res["bucketed_op"]), reference=r(res["padded_op"]), ratio=r(res["padded_op"] / res["bucketed_op"]),
            **common),
        row(protocol=proto, metric="fraction of candidates with identical top-k indices (bucketed vs padded)",
            value=r(res["agree"]), **common),
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--users", type=int, default=256)
    p.add_argument("--median", type=int, default=200)
    p.add_argument("--longest", type=int, default=8192)
    p.add_argument("--cands", default="1,32", help="candidate counts C (GPU: 1,512)")
    p.add_argument("--da", type=int, default=32)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--reps", type=int, default=5, help="CPU timing repetitions (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="rows to this .json path (default: results/jagged_vs_padded.json)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    lengths = long_tailed_lengths(args.users, args.median, args.longest, args.seed)
    rows: list[dict] = []
    for c in (int(x) for x in args.cands.split(",")):
        res = measure(c, args, lengths, device)
        rows += rows_of(c, res, args, lengths, device, command_line("benchmarks.jagged_vs_padded", argv))
        print(f"C={c}: from jagged padded {res['padded']:.3f} ms, bucketed {res['bucketed']:.3f} ms"
              f" ({res['padded'] / res['bucketed']:.2f}x); op only {res['padded_op']:.3f} vs {res['bucketed_op']:.3f} ms"
              f" ({res['padded_op'] / res['bucketed_op']:.2f}x); agree {res['agree']:.4f}; {res['buckets']} buckets,"
              f" slots {res['slots_padded']} vs {res['slots_bucketed']}", flush=True)
    path = None if args.no_write else write_rows_to(rows, args.out, "jagged_vs_padded")
    print(f"wrote {path}" if path else "rows not written (--no-write)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
