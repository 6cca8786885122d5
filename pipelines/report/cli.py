"""`recsys report RUN_DIR [RUN_DIR ...]`: score every run per user, write report.html,
metrics.json and report.md."""

from __future__ import annotations

import argparse
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pipelines.report.plots import plot_by_length, plot_comparison, plot_planted, plot_tradeoffs, plot_training_curves
from pipelines.report.render import render_html, render_markdown
from pipelines.report.rundir import RunSummary, read_benchmarks, read_run
from pipelines.report.scoring import clean, planted_retrieval_rows, score_run, summarize
from recsys.eval.bootstrap import CONFIDENCE

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP = 1000


def _unique_names(runs: list[RunSummary]) -> None:
    seen: dict[str, int] = {}
    for r in runs:
        if r.name in seen:
            seen[r.name] += 1
            r.name = f"{r.name} ({r.run_dir.name})" if r.run_dir.name != r.name else f"{r.name} #{seen[r.name]}"
        else:
            seen[r.name] = 1


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return clean(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def build_report(run_dirs: Iterable[str | Path], output: str | Path, bench_dir: str | Path | None = None,
                 n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, split: str = "test") -> dict[str, Path]:
    """Score every run per user, write report.html, metrics.json and report.md into `output`."""
    from recsys.artifacts import code_version
    from recsys.experiment import load_run

    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ValueError("report: give at least one run directory")
    runs = [read_run(d) for d in run_dirs]
    _unique_names(runs)
    for r in runs:
        log.info("scoring %s (%s on %s) per user", r.name, r.model, r.dataset)
        summarize(r, score_run(r, split), n_boot, seed)
        if r.task == "ctr":
            r.planted = planted_retrieval_rows(r, load_run(r.run_dir))
    bench = read_benchmarks(bench_dir)
    doc = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "bootstrap": {"resamples": n_boot, "seed": seed, "confidence": CONFIDENCE, "unit": "user", "method": "percentile"},
        "split": split,
        "runs": [r.as_dict() for r in runs],
        "benchmarks": bench,
    }
    plots = {
        "training": plot_training_curves(runs),
        "comparison": plot_comparison(runs),
        "by_length": plot_by_length(runs),
        "planted": plot_planted(runs, bench),
        "tradeoffs": plot_tradeoffs(runs, bench),
    }
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "report.html", "json": out / "metrics.json", "md": out / "report.md"}
    paths["json"].write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    paths["html"].write_text(render_html(doc, runs, bench, plots), encoding="utf-8")
    paths["md"].write_text(render_markdown(doc, runs), encoding="utf-8")
    return paths


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.description = "Offline evaluation report (HTML + metrics.json + Markdown) for one or more runs."
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by `recsys train`")
    parser.add_argument("--output", default="reports/latest", help="output folder (default: reports/latest)")
    parser.add_argument("--bench-dir", default="benchmarks/results", help="benchmark result tables to plot")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, help="bootstrap resamples of users")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--split", choices=("test", "valid"), default="test")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    paths = build_report(args.run_dirs, args.output, args.bench_dir, args.bootstrap, args.seed, args.split)
    for kind, p in paths.items():
        print(f"{kind}: {p}")
    print(f"report: {paths['html'].resolve()}")
    return 0
