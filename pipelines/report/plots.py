"""The report's figures: matplotlib (Agg backend) rendered to base64 PNG, so the page is one
self-contained file. Each function returns None when there is nothing to draw."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from pipelines.report.rundir import RunSummary
from pipelines.report.scoring import bucket_name
from recsys.eval.bootstrap import CONFIDENCE
from recsys.eval.protocol import NEXT_ITEM_PROTOCOLS


def is_latency(row: dict[str, Any]) -> bool:
    m = str(row.get("metric") or "").lower()
    return any(t in m for t in ("latency", "ms", "seconds", "time")) and isinstance(row.get("value"), (int, float))


def _fig_to_b64(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_key(r: RunSummary) -> str:
    """The validation key plotted for a run: the metric that selected its weights (eval.select_metric,
    e.g. valid/sampled100/ndcg@10) when the config names one, else the primary metric's
    (e.g. valid/full/ndcg@10)."""
    selected = ((r.config or {}).get("eval") or {}).get("select_metric")
    if selected:
        return f"valid/{selected}"
    keys = [k for h in r.history for k in h if k.startswith("valid/") and k.endswith(r.primary)]
    preferred = [k for k in keys if "/full/" in k]
    return (preferred or keys or [f"valid/{r.primary}"])[0]


def plot_training_curves(runs: list[RunSummary]) -> str | None:
    if not any(r.history for r in runs):
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for r in runs:
        xs = [h.get("epoch", i + 1) for i, h in enumerate(r.history)]
        loss = [h.get("train/loss") for h in r.history]
        ax1.plot(xs, loss, marker="o", label=r.name)
        key = curve_key(r)
        pts = [(x, h[key]) for x, h in zip(xs, r.history) if isinstance(h.get(key), (int, float))]
        if pts:
            ax2.plot(*zip(*pts), marker="o", label=f"{r.name} ({key.removeprefix('valid/')})")
    ax1.set(title="training loss (mean per epoch)", xlabel="epoch", ylabel="loss")
    ax2.set(title="validation metric that selects the weights", xlabel="epoch", ylabel="value")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _fig_to_b64(fig)


def plot_comparison(runs: list[RunSummary]) -> str | None:
    groups = {
        "next_item": [f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in (10,)],
        "ctr": ["auc", "gauc", "logloss"],
    }
    panels = []
    for task, names in groups.items():
        rs = [r for r in runs if r.task == task and r.metrics]
        if not rs:
            continue
        for pid in sorted({m.protocol_id for r in rs for m in r.metrics}):
            panels.append((task, pid, names, rs))
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (task, pid, names, rs) in zip(axes[0], panels):
        width = 0.8 / len(rs)
        for i, r in enumerate(rs):
            by = {m.metric: m for m in r.metrics if m.protocol_id == pid}
            vals = [by[n].value if n in by else np.nan for n in names]
            err = np.array([[by[n].value - by[n].ci_low, by[n].ci_high - by[n].value] if n in by else [0, 0] for n in names]).T
            ax.bar(np.arange(len(names)) + i * width, vals, width, yerr=np.nan_to_num(err), capsize=3, label=r.name)
        ax.set_xticks(np.arange(len(names)) + width * (len(rs) - 1) / 2, names)
        title = NEXT_ITEM_PROTOCOLS.get(pid, "CTR, test split").split(",")[0]
        ax.set_title(title[:60], fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.suptitle(f"test metrics with {int(CONFIDENCE * 100)}% bootstrap CI over users", fontsize=10)
    return _fig_to_b64(fig)


def plot_by_length(runs: list[RunSummary]) -> str | None:
    tasks = [t for t in ("next_item", "ctr") if any(r.task == t and r.by_length for r in runs)]
    if not tasks:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in runs:
            if r.task != task or not r.by_length:
                continue
            xs = [b["bucket_index"] for b in r.by_length]
            ys = np.array([b["value"] if b["value"] is not None else np.nan for b in r.by_length])
            lo = np.array([b["ci_low"] if b["ci_low"] is not None else np.nan for b in r.by_length])
            hi = np.array([b["ci_high"] if b["ci_high"] is not None else np.nan for b in r.by_length])
            ax.errorbar(xs, ys, yerr=np.nan_to_num(np.stack([ys - lo, hi - ys])), marker="o", capsize=3, label=r.name)
        ticks = sorted({b["bucket_index"] for r in runs if r.task == task for b in r.by_length})
        ax.set_xticks(ticks, [bucket_name(t) for t in ticks])
        ax.set(xlabel="history length (behaviours before the target)",
               ylabel="NDCG@10 (full ranking)" if task == "next_item" else "AUC")
        ax.set_title("next-item" if task == "next_item" else "CTR", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _fig_to_b64(fig)


def plot_planted(runs: list[RunSummary], bench: list[dict[str, Any]]) -> str | None:
    items = [(r.name, p["metric"], p["value"]) for r in runs for p in r.planted]
    items += [(f"{b.get('model')} [{b['file']}]", str(b.get("metric")), b["value"]) for b in bench
              if "planted" in str(b.get("protocol") or "").lower() and "retriev" in str(b.get("metric") or "").lower()
              and isinstance(b.get("value"), (int, float))]
    if not items:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(items) + 1.5))
    labels = [f"{n}: {m}" for n, m, _ in items]
    ax.barh(np.arange(len(items)), [v for _, _, v in items])
    ax.set_yticks(np.arange(len(items)), labels, fontsize=7)
    ax.set(xlabel="value", title="retrieval quality against planted relevant positions")
    ax.grid(alpha=0.3, axis="x")
    return _fig_to_b64(fig)


def plot_tradeoffs(runs: list[RunSummary], bench: list[dict[str, Any]]) -> str | None:
    sized = [r for r in runs if r.num_parameters and r.metrics]
    lat = [b for b in bench if is_latency(b)]
    if not sized and not lat:
        return None
    plt = _plt()
    n = int(bool(sized)) + int(bool(lat))
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 3.8), squeeze=False)
    ax_i = 0
    if sized:
        ax = axes[0][ax_i]
        ax_i += 1
        for r in sized:
            prim = next((m for m in r.metrics if m.metric == r.primary and m.protocol_id in ("full", "ctr")), None)
            if prim is None:
                continue
            ax.scatter([r.num_parameters], [prim.value], s=40)
            ax.annotate(f"{r.name} ({r.primary})", (r.num_parameters, prim.value), fontsize=7)
        ax.set_xscale("log")
        ax.set(xlabel="parameters", ylabel="primary test metric", title="quality vs model size")
        ax.grid(alpha=0.3)
    if lat:
        ax = axes[0][ax_i]
        labels = [f"{b.get('model') or b.get('name')}: {b.get('metric')} [{b['file']}]" for b in lat][:30]
        ax.barh(np.arange(len(labels)), [float(b["value"]) for b in lat][:30])
        ax.set_yticks(np.arange(len(labels)), labels, fontsize=6)
        ax.set_xscale("log")
        ax.set(xlabel="value (unit in the metric name)", title="latency / time rows of benchmarks/results")
        ax.grid(alpha=0.3, axis="x")
    return _fig_to_b64(fig)
