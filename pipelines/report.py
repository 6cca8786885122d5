"""Offline evaluation report: `recsys report RUN_DIR [RUN_DIR ...]`.

Reads run directories (config.yaml, metrics.jsonl, eval.json, manifest.json, weights), re-scores
every model per user on its build directory (so that confidence intervals can be bootstrapped over
users), and writes three files into the output folder:

    report.html   one self-contained page (CSS inline, plots as base64 PNG, no script, no link out)
    metrics.json  every number in the page, with its protocol, split, dataset and CI
    report.md     the metric tables and provenance in Markdown

Per-user values: next-item runs are reduced to the 0-based rank of the held-out item under each
protocol (full ranking with the history excluded, and sampled-100 with the build's persisted
negatives); HR/NDCG/MRR@k all follow from the rank. CTR runs are reduced to one logit per
test sample with its user. `next_item_ranks` and `ctr_predictions` compute them from the model
that `recsys.experiment.load_run` loads (the evaluation code writes only means); the per-user
numbers are checked to average to the run's own eval.json (`eval_json_value` in metrics.json).
Bootstrap: percentile intervals over users resampled with replacement (each sample weighted by
its user's multiplicity; AUC/GAUC are `recsys.ctr_metrics.auc`/`gauc` with those weights). The
resamples are drawn BOOT_CHUNK at a time (memory O(chunk x users)); the draws are the same indices
in the same order as one `rng.integers(0, n, (n_boot, n))` call, so the CIs do not depend on it.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import yaml

log = logging.getLogger(__name__)

KS = (5, 10, 20)
RANK_METRICS = ("hr", "ndcg", "mrr")
NEXT_ITEM_PROTOCOLS = {
    "full": "full ranking over all items, user history excluded",
    "sampled100": "sampled-100 (true item + 100 persisted negatives the user never interacted with)",
}
CTR_METRICS = ("auc", "gauc", "logloss")
#: history-length buckets (number of behaviours before the target), lower edges inclusive
LENGTH_EDGES = (1, 10, 50, 200, 1000, 5000)
DEFAULT_BOOTSTRAP = 1000
#: bootstrap resamples held in memory at once ([chunk, users] multiplicities)
BOOT_CHUNK = 50
CONFIDENCE = 0.95


# --------------------------------------------------------------------------------------------
# per-user inputs
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# metric math (vectorised numpy)
# --------------------------------------------------------------------------------------------
def rank_metric_values(ranks: np.ndarray, metric: str, k: int) -> np.ndarray:
    """Per-user HR@k / NDCG@k / MRR@k from 0-based ranks of the single relevant item."""
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks < k
    if metric == "hr":
        return hit.astype(np.float64)
    if metric == "ndcg":
        return np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    if metric == "mrr":
        return np.where(hit, 1.0 / (ranks + 1.0), 0.0)
    raise ValueError(f"metric: unknown rank metric {metric!r}; known: {RANK_METRICS}")


def _multiplicity_chunks(num_units: int, n_boot: int, seed: int, chunk: int = BOOT_CHUNK) -> Iterator[np.ndarray]:
    """[c, num_units] float64 counts of each unit (user) in each of the next c <= chunk resamples.
    The generator's stream is continuous across calls, so the indices drawn are exactly those of one
    `default_rng(seed).integers(0, num_units, (n_boot, num_units))` call, whatever `chunk` is."""
    if chunk < 1:
        raise ValueError(f"chunk: must be >= 1, got {chunk}")
    rng = np.random.default_rng(seed)
    for s in range(0, n_boot, chunk):
        c = min(chunk, n_boot - s)
        idx = rng.integers(0, num_units, size=(c, num_units))  # [c, U]
        flat = (np.arange(c)[:, None] * num_units + idx).ravel()
        yield np.bincount(flat, minlength=c * num_units).reshape(c, num_units).astype(np.float64)


def _percentile_ci(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size < samples.size:  # e.g. a resample whose users all have one class (AUC/GAUC undefined)
        log.warning("bootstrap: %d of %d resamples undefined; the interval uses the %d defined ones",
                    samples.size - finite.size, samples.size, finite.size)
    samples = finite
    if samples.size == 0:
        return float("nan"), float("nan")
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(samples, [a, 1.0 - a])
    return float(lo), float(hi)


def bootstrap_means(values: np.ndarray, n_boot: int, seed: int, chunk: int = BOOT_CHUNK) -> np.ndarray:
    """[n_boot, M] resampled means of per-user `values` [U] or [U, M] (users resampled with replacement)."""
    v = np.asarray(values, dtype=np.float64)
    v2 = v[:, None] if v.ndim == 1 else v  # [U, M]
    out = [(m @ v2) / m.sum(1)[:, None] for m in _multiplicity_chunks(len(v2), n_boot, seed, chunk)]
    return np.concatenate(out) if out else np.empty((0, v2.shape[1]))


def bootstrap_mean_ci(values: np.ndarray, n_boot: int, seed: int, chunk: int = BOOT_CHUNK) -> tuple[float, float]:
    """Percentile CI of the mean of per-user `values` [U] over `n_boot` user resamples."""
    return _percentile_ci(bootstrap_means(values, n_boot, seed, chunk)[:, 0])


def bce_with_logits(logits: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Per-sample logloss of sigmoid(logit), probabilities clipped to [eps, 1-eps] as in
    recsys.ctr_metrics.logloss."""
    p = np.clip(1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64))), eps, 1.0 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


def _max_chunk(n_items: int, budget: int = 4_000_000) -> int:
    return max(1, budget // max(n_items, 1))


# --------------------------------------------------------------------------------------------
# metric tables with bootstrap CIs
# --------------------------------------------------------------------------------------------
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
        return {k: _clean(v) for k, v in self.__dict__.items()}


def _clean(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        return None if not np.isfinite(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def next_item_rows(r: NextItemRanks, dataset: str, n_boot: int, seed: int) -> list[MetricRow]:
    rows: list[MetricRow] = []
    n = len(r.user_ids)
    if n == 0:
        raise ValueError(f"next-item {r.split}: no evaluated users")
    keys = [(pid, metric, k) for pid in r.ranks for metric in RANK_METRICS for k in KS]
    if not keys:
        return rows
    values = np.stack([rank_metric_values(r.ranks[pid], metric, k) for pid, metric, k in keys], axis=1)  # [U, M]
    boot = bootstrap_means(values, n_boot, seed)  # [n_boot, M], one set of user resamples for every metric
    for j, (pid, metric, k) in enumerate(keys):
        proto = f"{NEXT_ITEM_PROTOCOLS[pid]}; leave-one-out, {r.split}, {dataset}"
        lo, hi = _percentile_ci(boot[:, j])
        rows.append(MetricRow(f"{metric}@{k}", proto, pid, r.split, float(values[:, j].mean()), lo, hi, n, n))
    return rows


def ctr_metric_values(p: CTRPredictions, n_boot: int | None = None, seed: int = 0,
                      chunk: int = BOOT_CHUNK) -> dict[str, Any]:
    """Point values [1] (n_boot None) or bootstrap samples [n_boot] of AUC, GAUC, logloss, resampling
    users: each sample is weighted by its user's multiplicity in the resample."""
    from recsys.ctr_metrics import auc, gauc

    users, inv = np.unique(p.user_ids, return_inverse=True)
    losses = bce_with_logits(p.logits, p.labels)
    loss_sum = np.bincount(inv, weights=losses, minlength=len(users))
    cnt = np.bincount(inv, minlength=len(users)).astype(np.float64)
    pos = np.bincount(inv, weights=p.labels.astype(np.float64), minlength=len(users))
    chunks = [np.ones((1, len(users)))] if n_boot is None else _multiplicity_chunks(len(users), n_boot, seed, chunk)
    out: dict[str, list[np.ndarray]] = {m: [] for m in CTR_METRICS}
    step = _max_chunk(len(p.labels))  # rows of [rows, S] sample weights at once
    for mult in chunks:  # [c, U]
        for s in range(0, mult.shape[0], step):
            w = mult[s : s + step]
            sw = w[:, inv]  # [r, S] sample weight = its user's multiplicity
            out["auc"].append(auc(p.labels, p.logits, sw))
            out["gauc"].append(gauc(p.user_ids, p.labels, p.logits, sw))
            with np.errstate(invalid="ignore", divide="ignore"):
                out["logloss"].append((w @ loss_sum) / (w @ cnt))
    res: dict[str, Any] = {m: np.concatenate(v) if v else np.empty(0) for m, v in out.items()}
    res["n_users"] = len(users)
    res["n_gauc_users"] = int(((pos > 0) & (pos < cnt)).sum())
    return res


def ctr_rows(p: CTRPredictions, dataset: str, n_boot: int, seed: int) -> list[MetricRow]:
    point = ctr_metric_values(p)
    boot = ctr_metric_values(p, n_boot, seed)
    desc = {
        "auc": "AUC over all samples",
        "gauc": "GAUC: per-user AUC weighted by impressions, users with both labels",
        "logloss": "logloss (binary cross-entropy, sigmoid of the logit)",
    }
    rows = []
    for m in CTR_METRICS:
        lo, hi = _percentile_ci(boot[m])
        n_users = point["n_gauc_users"] if m == "gauc" else point["n_users"]
        proto = f"{desc[m]}; ctr_samples {p.split} split, {dataset}"
        rows.append(MetricRow(m, proto, "ctr", p.split, float(point[m][0]), lo, hi, int(n_users), len(p.labels)))
    return rows


def length_bucket_labels(lengths: np.ndarray) -> np.ndarray:
    edges = np.asarray(LENGTH_EDGES)
    return np.searchsorted(edges, np.asarray(lengths), side="right") - 1  # -1 = shorter than first edge


def bucket_name(i: int) -> str:
    lo = LENGTH_EDGES[i] if i >= 0 else 0
    hi = LENGTH_EDGES[i + 1] - 1 if i + 1 < len(LENGTH_EDGES) else None
    return f"{lo}-{hi}" if hi is not None else f"{lo}+"


def by_length_rows(data: NextItemRanks | CTRPredictions, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Primary metric per history-length bucket (next-item: NDCG@10 full ranking; CTR: AUC)."""
    buckets = length_bucket_labels(data.history_lengths)
    rows = []
    for b in np.unique(buckets):
        sel = buckets == b
        if isinstance(data, NextItemRanks):
            pid = "full" if "full" in data.ranks else next(iter(data.ranks))
            v = rank_metric_values(data.ranks[pid][sel], "ndcg", 10)
            lo, hi = bootstrap_mean_ci(v, n_boot, seed)
            metric, value, n_users, n_samples = f"ndcg@10 ({pid})", float(v.mean()), int(sel.sum()), int(sel.sum())
        else:
            from recsys.ctr_metrics import auc as ctr_auc

            sub = CTRPredictions(data.split, data.user_ids[sel], data.history_lengths[sel], data.labels[sel], data.logits[sel])
            n_users = len(np.unique(sub.user_ids))
            point = ctr_auc(sub.labels, sub.logits)
            boot = ctr_metric_values(sub, n_boot, seed)["auc"]
            lo, hi = _percentile_ci(boot)
            metric, value, n_samples = "auc", float(point), int(sel.sum())
        rows.append(_clean_dict({"bucket": bucket_name(int(b)), "bucket_index": int(b), "metric": metric, "value": value,
                                 "ci_low": lo, "ci_high": hi, "n_users": n_users, "n_samples": n_samples}))
    return rows


def _clean_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _clean(v) for k, v in d.items()}



# --------------------------------------------------------------------------------------------
# per-user scoring of a trained run (re-evaluation from the run directory + its build)
# --------------------------------------------------------------------------------------------
def _eval_rows_ends(lengths: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out: rows of evaluated users (>= 3 items) and the target position per row."""
    if split not in ("valid", "test"):
        raise ValueError(f"split: must be 'valid' or 'test', got {split!r}")
    rows = np.flatnonzero(lengths >= 3)
    ends = lengths[rows] - (1 if split == "test" else 2)
    return rows, ends


def next_item_ranks(model: Any, build_dir: str | Path, split: str = "test", batch_size: int = 256) -> NextItemRanks:
    """Rank of every evaluated user's held-out item under full ranking (all items, the input
    history excluded, the true item always kept) and sampled-100 (the build's persisted negatives).
    Ties are pessimistic, as in recsys.metrics."""
    import pyarrow.parquet as pq
    import torch

    from recsys.data import layout, schema
    from recsys.data.sequences import JaggedSequences
    from recsys.metrics import rank_of_target

    build_dir = Path(build_dir)
    seqs = JaggedSequences.read(build_dir)
    rows, ends = _eval_rows_ends(seqs.lengths, split)
    targets = seqs.items[seqs.offsets[rows] + ends]
    negs_path = build_dir / layout.EVAL_NEGATIVES
    negatives = None
    if negs_path.is_dir():
        t = layout.read_table(build_dir, layout.EVAL_NEGATIVES)
        neg_users = t[schema.USER].to_numpy()
        neg_lists = t[schema.NEGATIVES].combine_chunks()
        neg_flat = neg_lists.values.to_numpy(zero_copy_only=False).astype(np.int64)
        neg_off = neg_lists.offsets.to_numpy().astype(np.int64)
        if len(np.unique(np.diff(neg_off))) > 1:
            raise ValueError(f"{negs_path}: column {schema.NEGATIVES} must have the same length in every row")
        width = int(np.diff(neg_off)[0]) if len(neg_off) > 1 else 0
        neg_mat = neg_flat[neg_off[0] : neg_off[0] + width * len(neg_users)].reshape(len(neg_users), width)
        lookup = {int(u): i for i, u in enumerate(neg_users)}
        missing = [int(u) for u in seqs.user_ids[rows] if int(u) not in lookup]
        if missing:
            raise ValueError(f"{negs_path}: no negatives for {len(missing)} evaluated users (e.g. user_id {missing[0]})")
        negatives = neg_mat[[lookup[int(u)] for u in seqs.user_ids[rows]]]
    model.eval()
    max_len = int(model.max_len)
    full, sampled = [], []
    with torch.no_grad():
        table = model.item_embeddings()  # [N+1, d]
        for s in range(0, len(rows), batch_size):
            r, e, tgt = rows[s : s + batch_size], ends[s : s + batch_size], targets[s : s + batch_size]
            seq = torch.from_numpy(seqs.windows(r, e, max_len, align="left_pad"))
            user = model.user_embedding(seq)  # [B,d]
            scores = user @ table.T  # [B,N+1]
            tgt_t = torch.from_numpy(tgt)
            true = scores.gather(1, tgt_t[:, None]).clone()
            # mask padding and the whole input history (items[:end]); then restore the true item
            hist_len = e
            b_idx = np.repeat(np.arange(len(r)), hist_len)
            pos = np.repeat(seqs.offsets[r], hist_len) + (np.arange(hist_len.sum()) - np.repeat(np.cumsum(hist_len) - hist_len, hist_len))
            scores[:, 0] = -torch.inf
            scores[torch.from_numpy(b_idx), torch.from_numpy(seqs.items[pos])] = -torch.inf
            scores.scatter_(1, tgt_t[:, None], true)
            full.append(rank_of_target(scores, tgt_t).numpy())
            if negatives is not None:
                cand = torch.from_numpy(np.concatenate([tgt[:, None], negatives[s : s + batch_size]], axis=1))
                cs = (table[cand] * user[:, None, :]).sum(-1)  # [B,1+K]
                sampled.append(rank_of_target(cs, torch.zeros(len(r), dtype=torch.long)).numpy())
    ranks = {"full": np.concatenate(full).astype(np.int64)}
    if sampled:
        ranks["sampled100"] = np.concatenate(sampled).astype(np.int64)
    return NextItemRanks(split, seqs.user_ids[rows], ends.astype(np.int64), ranks)


def ctr_predictions(run_config: Any, model: Any, split: str = "test") -> CTRPredictions:
    """One logit per `split` sample of ctr_samples.parquet, from the run's own CTRTask (so the
    histories are exactly the ones its evaluation used); history length = untruncated prefix."""
    from recsys.experiment import build_task

    task = build_task(run_config)
    s = task.splits[split]
    logits = task.predict(model, split)
    return CTRPredictions(split, s.user_ids.astype(np.int64), s.prefix.astype(np.int64), s.labels.astype(np.int64), logits)


# --------------------------------------------------------------------------------------------
# one run: files, provenance, metrics
# --------------------------------------------------------------------------------------------
@dataclass
class RunSummary:
    run_dir: Path
    name: str
    task: str
    model: str
    dataset: str
    primary: str
    config_text: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    eval_json: dict[str, Any]
    manifest: dict[str, Any]
    build_dir: str | None
    build_manifest: dict[str, Any] | None
    num_parameters: int | None
    weights_bytes: int | None
    metrics: list[MetricRow] = field(default_factory=list)
    by_length: list[dict[str, Any]] = field(default_factory=list)
    planted: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "run_dir": str(self.run_dir),
            "task": self.task,
            "model": self.model,
            "dataset": self.dataset,
            "primary_metric": self.primary,
            "code_version": self.manifest.get("code_version"),
            "num_parameters": self.num_parameters,
            "weights_bytes": self.weights_bytes,
            "metrics": [m.as_dict() for m in self.metrics],
            "by_history_length": self.by_length,
            "planted_truth": self.planted,
            "eval_json": self.eval_json,
            "training_log": self.history,
            "config": self.config,
            "manifest": self.manifest,
            "build_dir": self.build_dir,
            "build_manifest": self.build_manifest,
        }


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: {what} is not valid JSON ({exc})") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: training log line is not valid JSON ({exc})") from None
    return out


def _weights_size(path: Path) -> tuple[int | None, int | None]:
    if not path.is_file():
        return None, None
    from safetensors import safe_open

    n = 0
    with safe_open(str(path), framework="np") as fh:
        for k in fh.keys():
            n += int(np.prod(fh.get_slice(k).get_shape()))
    return n, path.stat().st_size


def _dataset_name(build_dir: Path | None, manifest: dict[str, Any] | None) -> str:
    for key in ("dataset", "name", "source"):
        v = (manifest or {}).get(key)
        if isinstance(v, str) and v:
            return v
        if isinstance(v, dict) and isinstance(v.get("name"), str):
            return v["name"]
    return build_dir.name if build_dir is not None else "unknown dataset"


REQUIRED_RUN_FILES = ("config.yaml", "metrics.jsonl", "eval.json", "manifest.json")


def read_run(run_dir: str | Path) -> RunSummary:
    """The files of one run directory (no scoring yet); errors name the missing file/field."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    missing = [f for f in REQUIRED_RUN_FILES if not (run_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir}: not a finished run directory, missing {', '.join(missing)}")
    config_text = (run_dir / "config.yaml").read_text()
    config = yaml.safe_load(config_text) or {}
    for key in ("task", "model"):
        if key not in config:
            raise ValueError(f"{run_dir}/config.yaml: field {key!r} is missing")
    model_name = config["model"].get("name") if isinstance(config["model"], dict) else None
    if not model_name:
        raise ValueError(f"{run_dir}/config.yaml: field 'model.name' is missing")
    build = (config.get("data") or {}).get("build_dir")
    build_dir = Path(build) if build else None
    build_manifest = None
    if build_dir is not None and (build_dir / "manifest.json").is_file():
        build_manifest = _read_json(build_dir / "manifest.json", "build manifest")
    n_params, n_bytes = _weights_size(run_dir / "weights.safetensors")
    task = str(config["task"])
    return RunSummary(
        run_dir=run_dir,
        name=str(config.get("name") or run_dir.name),
        task=task,
        model=str(model_name),
        dataset=_dataset_name(build_dir, build_manifest),
        primary="ndcg@10" if task == "next_item" else "auc",
        config_text=config_text,
        config=config,
        history=_read_jsonl(run_dir / "metrics.jsonl"),
        eval_json=_read_json(run_dir / "eval.json", "eval.json"),
        manifest=_read_json(run_dir / "manifest.json", "run manifest"),
        build_dir=str(build_dir) if build_dir is not None else None,
        build_manifest=build_manifest,
        num_parameters=n_params,
        weights_bytes=n_bytes,
    )


def score_run(summary: RunSummary, split: str = "test") -> NextItemRanks | CTRPredictions:
    """Per-user values of a run, re-computed from its weights and its build directory."""
    from recsys.experiment import load_run

    loaded = load_run(summary.run_dir)
    build_dir = Path(loaded.build_dir)
    if summary.task == "next_item":
        return next_item_ranks(loaded.model, build_dir, split)
    if summary.task == "ctr":
        return ctr_predictions(loaded.config, loaded.model, split)
    raise ValueError(f"{summary.run_dir}/config.yaml: task {summary.task!r} is not next_item or ctr")


def summarize(summary: RunSummary, data: NextItemRanks | CTRPredictions, n_boot: int, seed: int) -> RunSummary:
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
    """Retrieval quality against planted truth: for CTR models that expose their search stage as
    `retrieval_indices(batch, k) -> [B, k]` history slots (-1 = none; DARE/TWIN), NDCG@k and
    recall@k of the retrieved positions against `planted_truth.parquet`'s relevant positions.
    Empty when the build has no planted truth or the model has no search stage."""
    import pyarrow.parquet as pq
    import torch

    path = Path(summary.build_dir or "") / "planted_truth.parquet"
    model = loaded.model
    if summary.task != "ctr" or not path.is_file() or not hasattr(model, "retrieval_indices"):
        return []
    from recsys.experiment import build_task

    truth = pq.read_table(path).to_pylist()
    rel = {(r["split"], int(r["user_id"]), int(r["prefix_length"]), int(r["item_id"])): set(r["relevant_positions"]) for r in truth}
    task = build_task(loaded.config)
    s = task.splits["test"]
    ndcg, recall = [], []
    disc = 1.0 / np.log2(np.arange(k) + 2.0)
    with torch.no_grad():
        for sel, batch in task.eval_batches("test"):
            idx = model.retrieval_indices(batch, k).numpy()  # [B,k] slots in the padded history
            full_len = s.prefix[sel]
            offset = full_len - batch["hist_lengths"].numpy()  # slot j = full position offset + j
            for b in range(idx.shape[0]):
                key = ("test", int(s.user_ids[sel[b]]), int(full_len[b]), int(s.items[sel[b]]))
                truth_b = rel.get(key)
                if not truth_b:
                    continue
                got = [int(offset[b] + j) for j in idx[b] if j >= 0]
                gains = np.array([1.0 if p in truth_b else 0.0 for p in got] + [0.0] * (k - len(got)))
                ideal = disc[: min(len(truth_b), k)].sum()
                ndcg.append(float((gains * disc).sum() / ideal))
                recall.append(float(gains.sum() / min(len(truth_b), k)))
    if not ndcg:
        return []
    return [{"metric": f"retrieval ndcg@{k}", "value": float(np.mean(ndcg)), "n_samples": len(ndcg),
             "protocol": f"top-{k} history positions of the search stage vs planted relevant positions, test, {summary.dataset}"},
            {"metric": f"retrieval recall@{k}", "value": float(np.mean(recall)), "n_samples": len(recall),
             "protocol": f"top-{k} history positions of the search stage vs planted relevant positions, test, {summary.dataset}"}]


# --------------------------------------------------------------------------------------------
# benchmark tables (latency / size trade-offs)
# --------------------------------------------------------------------------------------------
def read_benchmarks(bench_dir: str | Path | None) -> list[dict[str, Any]]:
    """All rows of benchmarks/results/*.json, each tagged with its file name."""
    if bench_dir is None or not Path(bench_dir).is_dir():
        return []
    rows = []
    for path in sorted(Path(bench_dir).glob("*.json")):
        data = _read_json(path, "benchmark result table")
        if not isinstance(data, list):
            raise ValueError(f"{path}: benchmark results must be a list of rows, got {type(data).__name__}")
        rows.extend({"file": path.stem, **r} for r in data if isinstance(r, dict))
    return rows


def _is_latency(row: dict[str, Any]) -> bool:
    m = str(row.get("metric") or "").lower()
    return any(t in m for t in ("latency", "ms", "seconds", "time")) and isinstance(row.get("value"), (int, float))


# --------------------------------------------------------------------------------------------
# plots (matplotlib Agg -> base64 PNG)
# --------------------------------------------------------------------------------------------
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


def _curve_key(r: RunSummary) -> str:
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
        key = _curve_key(r)
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
        title = NEXT_ITEM_PROTOCOLS.get(pid, "CTR, test split").split(";")[0]
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
    lat = [b for b in bench if _is_latency(b)]
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


# --------------------------------------------------------------------------------------------
# rendering (every interpolated string goes through html.escape)
# --------------------------------------------------------------------------------------------
def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(v: Any) -> str:
    """The one number format of the report (tests compare the page against metrics.json with it)."""
    if v is None:
        return "n/a"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    return f"{float(v):.4f}"


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


def _figure(b64: str | None, alt: str, caption: str, missing: str) -> str:
    if b64 is None:
        return f'<p class="note">{esc(missing)}</p>'
    return (f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _metric_table(r: RunSummary) -> str:
    out = []
    for pid in dict.fromkeys(m.protocol_id for m in r.metrics):
        rows = [m for m in r.metrics if m.protocol_id == pid]
        out.append(f"<h3>{esc(r.name)} — {esc(pid)}</h3>")
        protos = dict.fromkeys(m.protocol for m in rows)
        out.append("".join(f'<p class="note">protocol: {esc(p)}</p>' for p in protos))
        out.append('<table class="metrics"><thead><tr><th class="l">metric</th><th>value</th>'
                   f"<th>CI low ({int(CONFIDENCE * 100)}%)</th><th>CI high</th><th>users</th><th>samples</th></tr></thead><tbody>")
        for m in rows:
            attrs = (f'data-run="{esc(r.name)}" data-metric="{esc(m.metric)}" data-protocol-id="{esc(m.protocol_id)}" '
                     f'data-split="{esc(m.split)}"')
            out.append(f"<tr {attrs}><td class=\"l\">{esc(m.metric)}</td><td data-field=\"value\">{fmt(_clean(m.value))}</td>"
                       f"<td data-field=\"ci_low\">{fmt(_clean(m.ci_low))}</td><td data-field=\"ci_high\">{fmt(_clean(m.ci_high))}</td>"
                       f"<td data-field=\"n_users\">{fmt(m.n_users)}</td><td>{fmt(m.n_samples)}</td></tr>")
        out.append("</tbody></table>")
    return "".join(out)


def render_html(doc: dict[str, Any], runs: list[RunSummary], bench: list[dict[str, Any]], plots: dict[str, str | None]) -> str:
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Offline evaluation report</title>"
             f"<style>{CSS}</style></head><body><main>",
             "<h1>Offline evaluation report</h1>",
             f"<p class=\"note\">generated {esc(doc['generated'])} by report code {esc(doc['code_version'])}; "
             f"confidence intervals: percentile bootstrap, {doc['bootstrap']['resamples']} resamples of users, seed "
             f"{doc['bootstrap']['seed']}; numbers re-computed from each run's weights on its build directory.</p>",
             "<nav><ul>" + "".join(f'<li><a href="#{sid}">{esc(t)}</a></li>' for sid, t in SECTIONS) + "</ul></nav>"]
    sec = dict(SECTIONS)

    parts.append(f'<section id="runs"><h2>{esc(sec["runs"])}</h2><table><thead><tr><th class="l">run</th><th class="l">task</th>'
                 '<th class="l">model</th><th class="l">dataset</th><th>parameters</th><th>weights bytes</th>'
                 '<th class="l">code version</th></tr></thead><tbody>')
    for r in runs:
        parts.append(f"<tr><td class=\"l\">{esc(r.name)}</td><td class=\"l\">{esc(r.task)}</td><td class=\"l\">{esc(r.model)}</td>"
                     f"<td class=\"l\">{esc(r.dataset)}</td><td>{fmt(r.num_parameters)}</td><td>{fmt(r.weights_bytes)}</td>"
                     f"<td class=\"l\">{esc(r.manifest.get('code_version', 'unknown'))}</td></tr>")
    parts.append("</tbody></table></section>")

    parts.append(f'<section id="comparison"><h2>{esc(sec["comparison"])}</h2>')
    parts.append(_figure(plots["comparison"], "metric comparison", "bars: test metric; whiskers: bootstrap CI over users",
                         "no metrics to compare"))
    parts.append("</section>")

    parts.append(f'<section id="training-curves"><h2>{esc(sec["training-curves"])}</h2>')
    parts.append(_figure(plots["training"], "training curves", "left: mean training loss per epoch (metrics.jsonl); "
                         "right: the task's primary validation metric per evaluated epoch", "no run has a training log"))
    parts.append("</section>")

    parts.append(f'<section id="metrics"><h2>{esc(sec["metrics"])}</h2>')
    for r in runs:
        parts.append(_metric_table(r))
        if r.eval_json:
            parts.append(f"<details><summary>{esc(r.name)}: eval.json as written by the run</summary><pre>"
                         f"{esc(json.dumps(r.eval_json, indent=1, sort_keys=True))}</pre></details>")
    parts.append("</section>")

    parts.append(f'<section id="history-length"><h2>{esc(sec["history-length"])}</h2>')
    parts.append(_figure(plots["by_length"], "metrics by history length",
                         "primary test metric per bucket of history length (next-item: NDCG@10 full ranking; CTR: AUC), "
                         "with bootstrap CI over the bucket's users; long-sequence models should win on the right", "no data"))
    parts.append('<table><thead><tr><th class="l">run</th><th class="l">bucket</th><th class="l">metric</th><th>value</th>'
                 "<th>CI low</th><th>CI high</th><th>users</th><th>samples</th></tr></thead><tbody>")
    for r in runs:
        for b in r.by_length:
            parts.append(f"<tr data-run=\"{esc(r.name)}\" data-bucket=\"{esc(b['bucket'])}\"><td class=\"l\">{esc(r.name)}</td>"
                         f"<td class=\"l\">{esc(b['bucket'])}</td><td class=\"l\">{esc(b['metric'])}</td>"
                         f"<td data-field=\"value\">{fmt(b['value'])}</td><td>{fmt(b['ci_low'])}</td><td>{fmt(b['ci_high'])}</td>"
                         f"<td>{fmt(b['n_users'])}</td><td>{fmt(b['n_samples'])}</td></tr>")
    parts.append("</tbody></table></section>")

    parts.append(f'<section id="planted-truth"><h2>{esc(sec["planted-truth"])}</h2>')
    parts.append(_figure(plots["planted"], "planted truth retrieval", "search-stage retrieval against the planted relevant positions",
                         "No run's build has planted_truth.parquet with a model exposing its search stage, and no benchmark row "
                         "measures retrieval against planted truth: nothing to show."))
    parts.append("</section>")

    parts.append(f'<section id="tradeoffs"><h2>{esc(sec["tradeoffs"])}</h2>')
    parts.append(_figure(plots["tradeoffs"], "latency and size trade-offs",
                         "left: primary test metric against parameter count of each run; right: latency/time rows of the "
                         "benchmark tables (device and protocol in the table below)", "no sized runs and no benchmark rows"))
    lat = [b for b in bench if _is_latency(b)]
    if lat:
        cols = ("file", "model", "dataset", "protocol", "metric", "value", "ratio", "device", "command", "commit")
        parts.append("<table><thead><tr>" + "".join(f'<th class="l">{c}</th>' for c in cols) + "</tr></thead><tbody>")
        for b in lat:
            parts.append("<tr>" + "".join(f'<td class="l">{esc(fmt(b.get(c)) if c in ("value", "ratio") else b.get(c))}</td>'
                                          for c in cols) + "</tr>")
        parts.append("</tbody></table>")
    parts.append("</section>")

    parts.append(f'<section id="provenance"><h2>{esc(sec["provenance"])}</h2>')
    for r in runs:
        parts.append(f"<h3>{esc(r.name)}</h3><p>run directory <code>{esc(r.run_dir)}</code>, code version "
                     f"<code>{esc(r.manifest.get('code_version', 'unknown'))}</code>, build <code>{esc(r.build_dir)}</code></p>")
        parts.append(f"<details open><summary>config.yaml</summary><pre>{esc(r.config_text)}</pre></details>")
        parts.append(f"<details><summary>run manifest.json</summary><pre>{esc(json.dumps(r.manifest, indent=1, sort_keys=True))}</pre></details>")
        bm = json.dumps(r.build_manifest, indent=1, sort_keys=True) if r.build_manifest else "build manifest not found"
        parts.append(f"<details><summary>data manifest (build manifest.json)</summary><pre>{esc(bm)}</pre></details>")
    parts.append("</section></main></body></html>")
    return "\n".join(parts)


def render_markdown(doc: dict[str, Any], runs: list[RunSummary]) -> str:
    def md(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["# Offline evaluation report", "",
             f"Generated {doc['generated']} by report code `{doc['code_version']}`. Confidence intervals: percentile "
             f"bootstrap over users ({doc['bootstrap']['resamples']} resamples, seed {doc['bootstrap']['seed']}, "
             f"{int(CONFIDENCE * 100)}%).", ""]
    for r in runs:
        lines += [f"## {md(r.name)} ({md(r.model)}, {md(r.task)}, {md(r.dataset)})", "",
                  f"Run `{r.run_dir}`, code `{r.manifest.get('code_version', 'unknown')}`, build `{r.build_dir}`.", ""]
        for pid in dict.fromkeys(m.protocol_id for m in r.metrics):
            rows = [m for m in r.metrics if m.protocol_id == pid]
            lines += [f"Protocol: {md(rows[0].protocol)}", "", "| metric | value | CI low | CI high | users |",
                      "|---|---|---|---|---|"]
            lines += [f"| {m.metric} | {fmt(_clean(m.value))} | {fmt(_clean(m.ci_low))} | {fmt(_clean(m.ci_high))} | {m.n_users} |"
                      for m in rows]
            lines.append("")
        if r.by_length:
            lines += ["By history length:", "", "| bucket | metric | value | CI low | CI high | users |", "|---|---|---|---|---|---|"]
            lines += [f"| {b['bucket']} | {b['metric']} | {fmt(b['value'])} | {fmt(b['ci_low'])} | {fmt(b['ci_high'])} | {b['n_users']} |"
                      for b in r.by_length]
            lines.append("")
        for p in r.planted:
            lines.append(f"- {p['metric']}: {fmt(p['value'])} ({md(p['protocol'])})")
        lines += ["<details><summary>config.yaml</summary>", "", "```yaml", r.config_text.rstrip(), "```", "</details>", ""]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# the job
# --------------------------------------------------------------------------------------------
def _unique_names(runs: list[RunSummary]) -> None:
    seen: dict[str, int] = {}
    for r in runs:
        if r.name in seen:
            seen[r.name] += 1
            r.name = f"{r.name} ({r.run_dir.name})" if r.run_dir.name != r.name else f"{r.name} #{seen[r.name]}"
        else:
            seen[r.name] = 1


def build_report(run_dirs: Iterable[str | Path], output: str | Path, bench_dir: str | Path | None = None,
                 n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, split: str = "test") -> dict[str, Path]:
    """Score every run per user, write report.html, metrics.json and report.md into `output`."""
    from recsys.artifacts import code_version

    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ValueError("report: give at least one run directory")
    runs = [read_run(d) for d in run_dirs]
    _unique_names(runs)
    for r in runs:
        log.info("scoring %s (%s on %s) per user", r.name, r.model, r.dataset)
        summarize(r, score_run(r, split), n_boot, seed)
        if r.task == "ctr" and r.build_dir and (Path(r.build_dir) / "planted_truth.parquet").is_file():
            from recsys.experiment import load_run

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


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return _clean(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


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
