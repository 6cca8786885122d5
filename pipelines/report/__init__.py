"""Offline evaluation report: `recsys report RUN_DIR [RUN_DIR ...]`.

Reads run directories through one `RunDir` (rundir.py), re-scores every model per user with its own
task (scoring.py; the protocols live in recsys/eval/), and writes into the output folder:

    report.html   one self-contained page (CSS inline, plots as base64 PNG, no script, no link out),
                  rendered from templates/report.html.j2 with Jinja2 autoescaping (render.py)
    metrics.json  every number in the page, with its protocol, split, dataset and CI
    report.md     the metric tables and provenance in Markdown

Modules: rundir (files of a run), scoring (per-user values, metric rows, bootstrap CIs), plots
(matplotlib figures), render (HTML and Markdown), cli (`build_report` and the command).
"""

from pipelines.report.cli import DEFAULT_BOOTSTRAP, build_report, configure_cli
from pipelines.report.plots import curve_key
from pipelines.report.render import SECTIONS, fmt, render_html, render_markdown
from pipelines.report.rundir import RunDir, RunSummary, read_benchmarks, read_run
from pipelines.report.scoring import (
    CTRPredictions,
    MetricRow,
    NextItemRanks,
    ctr_metric_values,
    planted_retrieval_rows,
    score_run,
    summarize,
)

__all__ = ["DEFAULT_BOOTSTRAP", "SECTIONS", "CTRPredictions", "MetricRow", "NextItemRanks", "RunDir", "RunSummary",
           "build_report", "configure_cli", "ctr_metric_values", "curve_key", "fmt", "planted_retrieval_rows",
           "read_benchmarks", "read_run", "render_html", "render_markdown", "score_run", "summarize"]
