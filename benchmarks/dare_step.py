"""One DARE training step with the project's retrieval ops against the same step with eager ops
(issue 15: "a whole DARE training step on the GPU with the Triton kernels is faster than with the
eager ops").

Step = what `recsys.train.fit` runs per batch: `model.training_loss(batch)`, the finite-loss check,
`zero_grad`, `backward`, the fused Adam step of `recsys.train.make_optimizer`. The batch is generated
on the device (B samples, C=1 target each, every history L long, random item/category ids), and
the model is DARE at its paper dims (item/category/position 16 each: da = dr = 48), top-k = k.
- ours: `kernels.ops` as the model calls it (CUDA tensors -> the Triton kernels; on the CPU the
  reference ops, so a CPU run only smoke-tests the benchmark).
- eager: the same step inside `eager_ops()`, which swaps `kernels.ops.topk_target_search` for
  matmul + masked_fill + torch.topk and `kernels.ops.topk_aggregate` for the plain-PyTorch
  reference (gather + masked softmax + einsum, autograd backward): what the models would run
  without the kernels. The models look the ops up on `kernels.ops` at call time, so the swap
  reaches them; the eager functions count their calls and the run checks that they were used.
Both variants start from the same seed (same weights, same batch); their gradients before the first
step are compared (a row), then steps are timed alternately (ours, eager, ours, ...), median per
variant.

    TRITON_INTERPRET=0 PYTHONPATH=. python3 -m benchmarks.dare_step --device cuda    # issue shape, GPU
    .venv/bin/python -m benchmarks.dare_step --device cpu --smoke                     # tiny, any machine
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator

import torch

from benchmarks import kernels as kernel_bench
from benchmarks.results import command_line, row, write_rows_to
from kernels import ops
from kernels.reference import topk_search as ref_topk

CALLS: Counter = Counter()  # eager-op calls (the run asserts the eager variant really used them)


def eager_search(queries: torch.Tensor, keys: torch.Tensor, lengths: torch.Tensor | None,
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`benchmarks.kernels.eager_search` (matmul + masked_fill + torch.topk) with the op's contract:
    -inf / -1 in empty slots."""
    CALLS["search"] += 1
    q, keys = queries.detach().float(), keys.detach().float()
    b, c, _ = q.shape
    l = keys.shape[1]
    top_s, top_i = kernel_bench.eager_search(q, keys, lengths.to(keys.device), min(k, l))
    if k > l:
        top_s = torch.cat([top_s, top_s.new_full((b, c, k - l), float("-inf"))], dim=-1)
        top_i = torch.cat([top_i, top_i.new_full((b, c, k - l), -1)], dim=-1)
    return top_s, top_i.masked_fill(top_s == float("-inf"), -1)


def eager_aggregate(scores: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The plain-PyTorch aggregate (kernels.reference), differentiated by autograd."""
    CALLS["aggregate"] += 1
    return ref_topk.topk_aggregate(scores, indices, values)


@contextlib.contextmanager
def eager_ops() -> Iterator[None]:
    """Within the block, the models' retrieval ops are the eager functions above."""
    saved = ops.topk_target_search, ops.topk_aggregate
    ops.topk_target_search, ops.topk_aggregate = eager_search, eager_aggregate
    try:
        yield
    finally:
        ops.topk_target_search, ops.topk_aggregate = saved


def make_batch(b: int, l: int, items: int, cats: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """B samples with one target each and full histories of L random behaviours (ids >= 1)."""
    g = torch.Generator().manual_seed(seed)
    batch = {
        "hist_items": torch.randint(1, items + 1, (b, l), generator=g),
        "hist_cats": torch.randint(1, cats + 1, (b, l), generator=g),
        "hist_lengths": torch.full((b,), l, dtype=torch.int64),
        "target_items": torch.randint(1, items + 1, (b,), generator=g),
        "target_cats": torch.randint(1, cats + 1, (b,), generator=g),
        "labels": torch.randint(0, 2, (b,), generator=g).float(),
    }
    return {key: v.to(device) for key, v in batch.items()}


class Stepper:
    """A fresh DARE (seeded) and its fused Adam; `step` is fit's step, `grads` one backward only."""

    def __init__(self, k: int, l: int, items: int, cats: int, device: torch.device, seed: int) -> None:
        from recsys.models.dare import DARE, DAREConfig
        from recsys.train import TrainConfig, make_optimizer

        torch.manual_seed(seed)
        self.model = DARE.from_config(DAREConfig(top_k=k, max_position=max(l, 2000)), items, cats).to(device).train()
        self.opt = make_optimizer(self.model, TrainConfig())

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        loss, _ = self.model.training_loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def grads(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """All parameter gradients of one loss (flattened, float64), weights left unchanged."""
        loss, _ = self.model.training_loss(batch)
        params = [p for p in self.model.parameters() if p.requires_grad]
        got = torch.autograd.grad(loss, params, allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if g is None else g).double().flatten() for p, g in zip(params, got)])


def timed_ms(fn: Callable[[], object], device: torch.device) -> float:
    """One call's milliseconds (CUDA: events around it, then synchronize)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def measure(k: int, args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    """Both variants' first-step gradients (same weights and batch), then `steps` alternating timed
    steps of each after `warmup` untimed ones."""
    batch = make_batch(args.batch, args.length, args.items, args.categories, device, args.seed)
    ours = Stepper(k, args.length, args.items, args.categories, device, args.seed)
    eager = Stepper(k, args.length, args.items, args.categories, device, args.seed)
    g_ours = ours.grads(batch)
    before = CALLS.copy()
    with eager_ops():
        g_eager = eager.grads(batch)
    if CALLS["search"] == before["search"] or CALLS["aggregate"] == before["aggregate"]:
        raise RuntimeError("eager_ops() did not reach the model's retrieval ops")
    grad_rel = float((g_ours - g_eager).norm() / g_eager.norm().clamp_min(1e-300))
    for _ in range(args.warmup):
        ours.step(batch)
        with eager_ops():
            eager.step(batch)
    t_ours, t_eager = [], []
    for _ in range(args.steps):
        t_ours.append(timed_ms(lambda: ours.step(batch), device))
        with eager_ops():
            t_eager.append(timed_ms(lambda: eager.step(batch), device))
    return {"k": k, "grad_rel": grad_rel, "ours": t_ours, "eager": t_eager}


def rows_of(res: dict[str, object], args: argparse.Namespace, device: torch.device, cmd: str) -> list[dict]:
    """A step-time row (ratio = eager ms / ours ms) and a first-step loss agreement row."""
    k = res["k"]
    ours, eager = statistics.median(res["ours"]), statistics.median(res["eager"])
    where = "Triton kernels (CUDA)" if device.type == "cuda" else "reference ops (CPU dispatch; smoke only)"
    proto = (f"DARE training step (training_loss + backward + fused Adam, as recsys.train.fit), B={args.batch} samples,"
             f" C=1 target, L={args.length} (full histories), k={k}, item/cat/pos dims 16 (da=dr=48), fp32,"
             f" {args.items} items / {args.categories} categories, generated ids; ours = kernels.ops -> {where};"
             f" reference = same step with eager ops (matmul+masked_fill+torch.topk search, plain-PyTorch aggregate"
             f" with autograd); median of {args.steps} alternating steps after {args.warmup} warm-up;"
             f" ours {[round(x, 2) for x in res['ours']]}, eager {[round(x, 2) for x in res['eager']]}")
    dataset = f"generated ids ({args.items} items, {args.categories} categories)"
    common = dict(name="dare_step", model="dare", dataset=dataset, seed=args.seed, command=cmd)
    return [
        row(protocol=proto, metric="ms per step (ratio = eager / ours; target > 1)", value=round(ours, 4),
            reference=round(eager, 4), ratio=round(eager / ours, 4), **common),
        row(protocol=f"same weights and batch before the first step, k={k}: ||grad ours - grad eager|| /"
            f" ||grad eager|| over all parameters (0 = the same step; near-ties in the search may differ)",
            metric="grad_rel_diff", value=float(f"{res['grad_rel']:.3g}"), **common),
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny defaults (B=16, L=64, k=4,8, 1 warm-up, 3 steps)")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--ks", default="20,64")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--categories", type=int, default=1_000)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="rows to this .json path; default: results/dare_step.json, or none with --smoke")
    if "--smoke" in argv:  # smaller defaults; options given explicitly still win
        p.set_defaults(batch=16, length=64, ks="4,8", items=500, categories=20, warmup=1, steps=3)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    rows: list[dict] = []
    for k in (int(x) for x in args.ks.split(",")):
        res = measure(k, args, device)
        rows += rows_of(res, args, device, command_line("benchmarks.dare_step", argv))
        print(f"dare_step k={k}: ours {statistics.median(res['ours']):.3f} ms, eager {statistics.median(res['eager']):.3f} ms,"
              f" ratio {rows[-2]['ratio']}, gradient rel diff {rows[-1]['value']}", flush=True)
    path = write_rows_to(rows, args.out, None if args.smoke else "dare_step")
    print(f"wrote {path}" if path else "rows not written (--smoke without --out)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
