"""Per-user values of a trained run and the metric tables built from them.

Next-item runs are reduced to the 0-based rank of each evaluated user's held-out item under each
protocol, CTR runs to one logit per sample with its user; both come from the run's own task
(`recsys.experiment.build_task`: `NextItemTask.ranks`, `CTRTask.predict`), so the report scores with
exactly the code that wrote eval.json and checks that the per-user numbers average to it
(`eval_json_value`). Confidence intervals: recsys/eval/bootstrap.py (users resampled).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.report.rundir import RunSummary
from recsys.eval.bootstrap import (
    BOOT_CHUNK,
    CTR_METRICS,
    bootstrap_mean_ci,
    bootstrap_means,
    ctr_bootstrap,
    percentile_ci,
)
from recsys.eval.ctr import auc as ctr_auc
from recsys.eval.planted import has_planted_truth, planted_retrieval
from recsys.eval.protocol import NEXT_ITEM_PROTOCOLS
from recsys.eval.ranking import RANK_METRICS, rank_metric_values

KS = (5, 10, 20)
#: history-length buckets (number of behaviours before the target), lower edges inclusive
LENGTH_EDGES = (1, 10, 50, 200, 1000, 5000)
CTR_DESCRIPTIONS = {
    "auc": "AUC over all samples",
    "gauc": "GAUC: per-user AUC weighted by impressions, users with both labels",
    "logloss": "logloss (binary cross-entropy, sigmoid of the logit)",
}


@dataclass
class NextItemRanks:
    """0-based rank of each evaluated user's held-out item, per protocol."""

    split: str
    user_ids: np.ndarray  # [U]
    history_lengths: np.ndarray  # [U] behaviours before the target (untruncated)
    ranks: dict[str, np.ndarray]  # protocol id -> [U] int64

    def __post_init__(self) -> None:
        n = len(self.user_ids)
        for key, r in self.ranks.items():
            if key not in NEXT_ITEM_PROTOCOLS:
                raise ValueError(f"ranks: unknown protocol {key!r}; known: {sorted(NEXT_ITEM_PROTOCOLS)}")
            if len(r) != n:
                raise ValueError(f"ranks[{key!r}]: {len(r)} values for {n} users")
        if len(self.history_lengths) != n:
            raise ValueError(f"history_lengths: {len(self.history_lengths)} values for {n} users")


@dataclass
class CTRPredictions:
    """One logit per scored sample, with its user and history length."""

    split: str
    user_ids: np.ndarray  # [S]
    history_lengths: np.ndarray  # [S] prefix_length of the sample
    labels: np.ndarray  # [S] 0/1
    logits: np.ndarray  # [S] pre-sigmoid scores

    def __post_init__(self) -> None:
        n = len(self.labels)
        for name in ("user_ids", "history_lengths", "logits"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: {len(getattr(self, name))} values for {n} labels")
        bad = ~np.isin(self.labels, (0, 1))
        if bad.any():
            raise ValueError(f"labels: must be 0/1, found {np.unique(self.labels[bad])[:5].tolist()}")


def ctr_metric_values(p: CTRPredictions, n_boot: int | None = None, seed: int = 0, chunk: int = BOOT_CHUNK
                      ) -> dict[str, Any]:
    """Point values (n_boot None) or bootstrap samples of AUC, GAUC, logloss (recsys/eval/bootstrap.py)."""
    return ctr_bootstrap(p.user_ids, p.labels, p.logits, n_boot, seed, chunk)


def clean(v: Any) -> Any:
    """JSON-safe scalar: numpy -> Python, non-finite floats -> None."""
    if isinstance(v, (np.floating, float)):
        return None if not np.isfinite(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


@dataclass
class MetricRow:
    metric: str
    protocol: str
    protocol_id: str
    split: str
    value: float
    ci_low: float
    ci_high: float
    n_users: int
    n_samples: int | None = None
    #: the same number as the run's own eval.json recorded it (None when it has no such key)
    eval_json_value: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: clean(v) for k, v in self.__dict__.items()}


def next_item_rows(r: NextItemRanks, dataset: str, n_boot: int, seed: int) -> list[MetricRow]:
    n = len(r.user_ids)
    if n == 0:
        raise ValueError(f"next-item {r.split}: no evaluated users")
    keys = [(pid, metric, k) for pid in r.ranks for metric in RANK_METRICS for k in KS]
    if not keys:
        return []
    values = np.stack([rank_metric_values(r.ranks[pid], metric, k) for pid, metric, k in keys], axis=1)  # [U, M]
    boot = bootstrap_means(values, n_boot, seed)  # [n_boot, M], one set of user resamples for every metric
    rows = []
    for j, (pid, metric, k) in enumerate(keys):
        proto = f"{NEXT_ITEM_PROTOCOLS[pid]}; {r.split}, {dataset}"
        lo, hi = percentile_ci(boot[:, j])
        rows.append(MetricRow(f"{metric}@{k}", proto, pid, r.split, float(values[:, j].mean()), lo, hi, n, n))
    return rows


def ctr_rows(p: CTRPredictions, dataset: str, n_boot: int, seed: int) -> list[MetricRow]:
    point = ctr_metric_values(p)
    boot = ctr_metric_values(p, n_boot, seed)
    rows = []
    for m in CTR_METRICS:
        lo, hi = percentile_ci(boot[m])
        n_users = point["n_gauc_users"] if m == "gauc" else point["n_users"]
        proto = f"{CTR_DESCRIPTIONS[m]}; ctr_samples {p.split} split, {dataset}"
        rows.append(MetricRow(m, proto, "ctr", p.split, float(point[m][0]), lo, hi, int(n_users), len(p.labels)))
    return rows


def bucket_name(i: int) -> str:
    lo = LENGTH_EDGES[i] if i >= 0 else 0
    hi = LENGTH_EDGES[i + 1] - 1 if i + 1 < len(LENGTH_EDGES) else None
    return f"{lo}-{hi}" if hi is not None else f"{lo}+"


def by_length_rows(data: NextItemRanks | CTRPredictions, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Primary metric per history-length bucket (next-item: NDCG@10 full ranking; CTR: AUC)."""
    buckets = np.searchsorted(np.asarray(LENGTH_EDGES), np.asarray(data.history_lengths), side="right") - 1
    rows = []
    for b in np.unique(buckets):
        sel = buckets == b
        if isinstance(data, NextItemRanks):
            pid = "full" if "full" in data.ranks else next(iter(data.ranks))
            v = rank_metric_values(data.ranks[pid][sel], "ndcg", 10)
            lo, hi = bootstrap_mean_ci(v, n_boot, seed)
            metric, value, n_users, n_samples = f"ndcg@10 ({pid})", float(v.mean()), int(sel.sum()), int(sel.sum())
        else:
            sub = CTRPredictions(data.split, data.user_ids[sel], data.history_lengths[sel], data.labels[sel],
                                 data.logits[sel])
            lo, hi = percentile_ci(ctr_metric_values(sub, n_boot, seed)["auc"])
            metric, value = "auc", float(ctr_auc(sub.labels, sub.logits))
            n_users, n_samples = len(np.unique(sub.user_ids)), int(sel.sum())
        row = {"bucket": bucket_name(int(b)), "bucket_index": int(b), "metric": metric, "value": value,
               "ci_low": lo, "ci_high": hi, "n_users": n_users, "n_samples": n_samples}
        rows.append({k: clean(v) for k, v in row.items()})
    return rows


def score_run(summary: RunSummary, split: str = "test") -> NextItemRanks | CTRPredictions:
    """Per-user values of a run, re-computed from its weights and its build directory by its task."""
    from recsys.experiment import build_task, load_run

    loaded = load_run(summary.run_dir)
    task: Any = build_task(loaded.config)
    if summary.task == "next_item":
        rows, ranks = task.ranks(loaded.model, split)
        shift = 2 if split == "valid" else 1
        ends = task.sequences.lengths[rows] - shift
        return NextItemRanks(split, task.sequences.user_ids[rows], ends.astype(np.int64), ranks)
    s = task.splits[split]
    logits = task.predict(loaded.model, split)
    return CTRPredictions(split, s.user_ids.astype(np.int64), s.prefix.astype(np.int64), s.labels.astype(np.int64),
                          logits)


def summarize(summary: RunSummary, data: NextItemRanks | CTRPredictions, n_boot: int, seed: int) -> RunSummary:
    """Metric rows (with bootstrap CIs and the run's own eval.json value) and by-length rows."""
    if isinstance(data, NextItemRanks):
        summary.metrics = next_item_rows(data, summary.dataset, n_boot, seed)
    else:
        summary.metrics = ctr_rows(data, summary.dataset, n_boot, seed)
    for m in summary.metrics:
        for key in (f"{m.split}/{m.protocol_id}/{m.metric}", f"{m.split}/{m.metric}"):
            if isinstance(summary.eval_json.get(key), (int, float)):
                m.eval_json_value = float(summary.eval_json[key])
                break
    summary.by_length = by_length_rows(data, n_boot, seed)
    return summary


def planted_retrieval_rows(summary: RunSummary, loaded: Any, k: int = 50) -> list[dict[str, Any]]:
    """Retrieval quality against planted truth (recsys/eval/planted.py) of a CTR model exposing its
    search stage (`retrieval_indices`: DARE/TWIN); empty without planted truth or search stage."""
    from recsys.experiment import build_task

    model = loaded.model
    if summary.task != "ctr" or not has_planted_truth(summary.build_dir or "") or not hasattr(model, "retrieval_indices"):
        return []
    res = planted_retrieval(build_task(loaded.config), model, summary.build_dir, "test", k)
    if res.num_targets == 0:
        return []
    proto = (f"top-{k} history positions of the search stage vs planted relevant positions inside the history "
             f"window, test, {summary.dataset}")
    return [{"metric": f"retrieval ndcg@{k}", "value": res.ndcg, "n_samples": res.num_targets, "protocol": proto},
            {"metric": f"retrieval recall@{k}", "value": res.recall, "n_samples": res.num_targets, "protocol": proto}]
