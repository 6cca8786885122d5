"""The report's HTML page (Jinja2 template templates/report.html.j2, autoescaped) and Markdown."""

from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from pipelines.report.plots import is_latency
from pipelines.report.rundir import RunSummary
from pipelines.report.scoring import MetricRow, clean
from recsys.eval.bootstrap import CONFIDENCE

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{border-bottom:2px solid #446}h2{margin-top:2em;border-bottom:1px solid #ccd}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccd;padding:3px 8px;text-align:right}th{background:#eef}td.l,th.l{text-align:left}
pre{background:#f6f6fa;padding:.6em;overflow:auto;font-size:12px;max-height:30em}
figure{margin:1em 0}img{max-width:100%;border:1px solid #ddd}figcaption{font-size:12px;color:#555}
.note{color:#666;font-size:13px}
"""

SECTIONS = (  # page order: plots first, so a browser's first screen shows them
    ("runs", "Runs"),
    ("comparison", "Metric comparison across models"),
    ("training-curves", "Training curves"),
    ("metrics", "Metrics (test split, bootstrap confidence intervals over users)"),
    ("history-length", "Metrics by history length"),
    ("planted-truth", "Retrieval quality against planted truth"),
    ("tradeoffs", "Latency and model-size trade-offs"),
    ("provenance", "Provenance: configs, data manifests, code versions"),
)
LATENCY_COLUMNS = ("file", "model", "dataset", "protocol", "metric", "value", "ratio", "device", "command", "commit")


def fmt(v: Any) -> str:
    """The one number format of the report (tests compare the page against metrics.json with it)."""
    if v is None:
        return "n/a"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    return f"{float(v):.4f}"


def _by_protocol(metrics: Iterable[MetricRow]) -> list[tuple[str, list[MetricRow]]]:
    rows = list(metrics)
    return [(pid, [m for m in rows if m.protocol_id == pid]) for pid in dict.fromkeys(m.protocol_id for m in rows)]


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("pipelines.report", "templates"), autoescape=select_autoescape(["html", "j2"]),
                      undefined=StrictUndefined, trim_blocks=False, lstrip_blocks=False)
    env.filters.update(fmt=fmt, clean=clean, groupby_protocol=_by_protocol,
                       pretty_json=lambda d: json.dumps(d, indent=1, sort_keys=True))
    return env


def render_html(doc: dict[str, Any], runs: list[RunSummary], bench: list[dict[str, Any]],
                plots: dict[str, str | None]) -> str:
    """The self-contained page (CSS inline, plots as base64 PNG, no script, no link out)."""
    return _environment().get_template("report.html.j2").render(
        doc=doc, runs=runs, plots=plots, sections=SECTIONS, titles=dict(SECTIONS), css=CSS,
        confidence_pct=int(CONFIDENCE * 100), latency=[b for b in bench if is_latency(b)],
        latency_cols=LATENCY_COLUMNS)


def _md(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _md_run(r: RunSummary) -> list[str]:
    lines = [f"## {_md(r.name)} ({_md(r.model)}, {_md(r.task)}, {_md(r.dataset)})", "",
             f"Run `{r.run_dir}`, code `{r.manifest.get('code_version', 'unknown')}`, build `{r.build_dir}`.", ""]
    for _, rows in _by_protocol(r.metrics):
        lines += [f"Protocol: {_md(rows[0].protocol)}", "", "| metric | value | CI low | CI high | users |",
                  "|---|---|---|---|---|"]
        lines += [f"| {m.metric} | {fmt(clean(m.value))} | {fmt(clean(m.ci_low))} | {fmt(clean(m.ci_high))} | {m.n_users} |"
                  for m in rows]
        lines.append("")
    if r.by_length:
        lines += ["By history length:", "", "| bucket | metric | value | CI low | CI high | users |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {b['bucket']} | {b['metric']} | {fmt(b['value'])} | {fmt(b['ci_low'])} | {fmt(b['ci_high'])} | "
                  f"{b['n_users']} |" for b in r.by_length]
        lines.append("")
    lines += [f"- {p['metric']}: {fmt(p['value'])} ({_md(p['protocol'])})" for p in r.planted]
    lines += ["<details><summary>config.yaml</summary>", "", "```yaml", r.config_text.rstrip(), "```", "</details>", ""]
    return lines


def render_markdown(doc: dict[str, Any], runs: list[RunSummary]) -> str:
    """The metric tables and provenance in Markdown."""
    lines = ["# Offline evaluation report", "",
             f"Generated {doc['generated']} by report code `{doc['code_version']}`. Confidence intervals: percentile "
             f"bootstrap over users ({doc['bootstrap']['resamples']} resamples, seed {doc['bootstrap']['seed']}, "
             f"{int(CONFIDENCE * 100)}%).", ""]
    for r in runs:
        lines += _md_run(r)
    return "\n".join(lines) + "\n"
