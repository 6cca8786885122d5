"""CTR metrics: AUC, GAUC and logloss (numpy, vectorised; torch tensors accepted).

- AUC: Mann-Whitney statistic with tied scores given their average rank (a tie between a
  positive and a negative counts 1/2). NaN when only one class is present.
- GAUC: per-user AUC, averaged with weights = the user's number of impressions, over the users
  that have both a positive and a negative (users with one class have no AUC and are excluded
  from both numerator and denominator). NaN when no user qualifies.
- logloss: mean binary cross-entropy with probabilities clipped to [eps, 1 - eps].
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _np(x: Any, name: str, dtype: Any = np.float64) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {arr.shape}")
    return arr


def _check(labels: np.ndarray, *others: tuple[np.ndarray, str]) -> None:
    for arr, name in others:
        if arr.shape != labels.shape:
            raise ValueError(f"{name} has shape {arr.shape}, labels {labels.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or inf")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be 0 or 1")


def _average_ranks(groups: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based average ranks of scores within each group; returns (order, ranks in that order)."""
    order = np.lexsort((scores, groups))
    g, s = groups[order], scores[order]
    n = len(s)
    idx = np.arange(n)
    new_group = np.r_[True, g[1:] != g[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, idx, 0))
    new_tie = new_group | np.r_[True, s[1:] != s[:-1]]
    tie_id = np.cumsum(new_tie) - 1
    tie_first = idx[new_tie]
    tie_last = np.r_[tie_first[1:] - 1, n - 1]
    ranks = (tie_first[tie_id] + tie_last[tie_id]) / 2.0 - group_start + 1.0
    return order, ranks


def auc(labels: Any, scores: Any) -> float:
    """ROC AUC with average ranks for ties."""
    y, s = _np(labels, "labels"), _np(scores, "scores")
    _check(y, (s, "scores"))
    return gauc(np.zeros(len(y), dtype=np.int64), y, s)


def gauc(user_ids: Any, labels: Any, scores: Any) -> float:
    """Impression-weighted mean of per-user AUC over users with both classes."""
    u = _np(user_ids, "user_ids", np.int64)
    y, s = _np(labels, "labels"), _np(scores, "scores")
    _check(y, (s, "scores"), (u.astype(np.float64), "user_ids"))
    if len(y) == 0:
        return float("nan")
    order, ranks = _average_ranks(u, s)
    _, grp = np.unique(u[order], return_inverse=True)
    yo = y[order]
    n = np.bincount(grp).astype(np.float64)
    pos = np.bincount(grp, weights=yo)
    neg = n - pos
    rank_sum = np.bincount(grp, weights=ranks * yo)
    ok = (pos > 0) & (neg > 0)
    if not ok.any():
        return float("nan")
    per_user = (rank_sum[ok] - pos[ok] * (pos[ok] + 1) / 2.0) / (pos[ok] * neg[ok])
    return float(np.sum(per_user * n[ok]) / np.sum(n[ok]))


def logloss(labels: Any, probs: Any, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [eps, 1-eps])."""
    y, p = _np(labels, "labels"), _np(probs, "probs")
    _check(y, (p, "probs"))
    if len(y) == 0:
        return float("nan")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def ctr_metrics(user_ids: Any, labels: Any, logits: Any) -> dict[str, float]:
    """{"auc", "gauc", "logloss"} from pre-sigmoid logits."""
    z = _np(logits, "logits")
    probs = 1.0 / (1.0 + np.exp(-z))
    return {"auc": auc(labels, z), "gauc": gauc(user_ids, labels, z), "logloss": logloss(labels, probs)}
