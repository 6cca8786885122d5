"""The rows of benchmarks/serving.py: one run's settings (`Bench`) and the result rows derived
from its measurements (per-cell latencies and throughput, flatness in L, HTTP overhead)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.results import row


def fmt_list(xs: list[float]) -> str:
    """Numbers to 3 significant digits, as a list in a protocol text."""
    return "[" + ", ".join(f"{x:.3g}" for x in xs) + "]"


@dataclass
class Bench:
    """One benchmark run: its settings, the shared store and candidate sets, and the rows so far."""

    args: argparse.Namespace
    command: str
    db: Path
    cand_sets: dict[int, list[list[int]]]
    client: str
    base: str  # the protocol text every grid row starts with
    serving_device: str
    cands_grid: tuple[int, ...]
    lengths_grid: tuple[int, ...]
    conc_grid: tuple[int, ...]
    user_of: dict[int, int]  # the store's user with each history length
    dataset: str
    rows: list[dict] = field(default_factory=list)

    def add(self, model: str, protocol: str, metric: str, value: float, reference: float | None = None,
            ratio: float | None = None) -> None:
        """One result row (ratio = value / reference unless given), printed as it is added."""
        if ratio is None and reference not in (None, 0):
            ratio = value / reference
        self.rows.append(row(name=self.args.out, model=model, dataset=self.dataset, protocol=protocol,
                             metric=metric, value=round(value, 4), reference=None if reference is None else round(reference, 4),
                             ratio=None if ratio is None else round(ratio, 4), seed=0, command=self.command,
                             device=self.serving_device))
        base = self.base
        print(f"{model:5s} {protocol[len(base) + 2:] if protocol.startswith(base) else protocol[:150]:70s} {metric:14s} {value:9.3f}"
              + ("" if reference is None else f"  ref {reference:.3f}") + ("" if ratio is None else f"  ratio {ratio:.3f}"), flush=True)


def grid_rows(b: Bench, model: str, res: dict[tuple[int, int, int], list[dict]], med: dict) -> None:
    """p50, p99 and throughput per cell; p99 at each L against L=100 (flatness)."""
    for (c, length, conc), outs in sorted(res.items()):
        proto = (f"{b.base}, C={c}, L={length}, concurrency={conc}, requests per repeat {[o['n'] for o in outs]},"
                 f" 2-core load avg {fmt_list([o['load'] for o in outs])}")
        b.add(model, f"{proto}, repeats {fmt_list([o['p50_ms'] for o in outs])}", "p50_ms", med[(c, length, conc)]["p50_ms"])
        p99s = fmt_list([o["p99_ms"] for o in outs])
        if model == "sdim" and c == 512 and length == 10_000 and conc == 8:
            b.add(model, f"{proto}, repeats {p99s}; target: p99 <= 20 ms, ratio = p99 / 20 ms (<= 1 met)", "p99_ms",
                  med[(c, length, conc)]["p99_ms"], 20.0)
        else:
            b.add(model, f"{proto}, repeats {p99s}", "p99_ms", med[(c, length, conc)]["p99_ms"])
        b.add(model, f"{proto}, repeats {fmt_list([o['rps'] for o in outs])}", "throughput_rps", med[(c, length, conc)]["rps"])
    for c in b.cands_grid:  # flatness in L: median p99 at L / median p99 at L=100, target within +-20%
        for conc in b.conc_grid:
            for length in b.lengths_grid:
                if length == 100 or 100 not in b.lengths_grid:
                    continue
                b.add(model, f"{b.base}, C={c}, concurrency={conc}: median p99 at L={length} (repeats"
                      f" {fmt_list([o['p99_ms'] for o in res[(c, length, conc)]])}) vs at L=100 (repeats"
                      f" {fmt_list([o['p99_ms'] for o in res[(c, 100, conc)]])}); target: ratio within 0.8-1.2",
                      "p99_vs_L100", med[(c, length, conc)]["p99_ms"], med[(c, 100, conc)]["p99_ms"])


def overhead_rows(b: Bench, model: str, cell: list[dict], med_cell: dict[str, float], inproc: list[float]) -> None:
    """HTTP + validation overhead at C=512, L=10000, concurrency 1, and the server-side split."""
    base = b.base
    http = med_cell["p50_ms"]
    ref = float(np.median(inproc))
    b.add(model, f"in-process p50 of the handler's scoring call (CTRScorer.encode_items + serving.scoring.run_score_jobs on one"
          f" job: cached-state check against the SQLite store's event count, scoring), same store and cached state, no HTTP,"
          f" C=512, L=10000, 300 calls per repeat, median over {len(inproc)} repeats {fmt_list(inproc)}", "inproc_ms", ref)
    b.add(model, f"{base}, C=512, L=10000, concurrency=1: overhead = (HTTP p50 - in-process p50) / in-process p50, HTTP p50"
          f" repeats {fmt_list([o['p50_ms'] for o in cell])}, in-process p50 repeats {fmt_list(inproc)}; value = HTTP p50 -"
          f" in-process p50 (ms), reference = in-process p50; target: ratio <= 0.30", "http_overhead", http - ref, ref)
    app_ms, score_ms = med_cell["app_ms"], med_cell["score_ms"]
    b.add(model, f"server-side split, same runs as http_overhead ({base}, C=512, L=10000, concurrency=1): value = mean"
          f" time inside the ASGI app for /v1/score (GuardMiddleware histogram: fast-path parse and checks, id mapping,"
          f" batcher, scoring, serialisation, metrics; not socket I/O or HTTP parsing) - mean scoring call time (batch"
          f" latency histogram; one request per batch at concurrency 1), reference = that scoring time; app repeats"
          f" {fmt_list([o['app_ms'] for o in cell])}, scoring repeats {fmt_list([o['score_ms'] for o in cell])} ms",
          "app_overhead", app_ms - score_ms, score_ms)
