"""CTR metrics: AUC, GAUC and logloss (numpy, vectorised; torch tensors accepted).

- AUC: Mann-Whitney statistic with tied scores given their average rank (a tie between a
  positive and a negative counts 1/2). NaN when only one class is present.
- GAUC: per-user AUC, averaged with weights = the user's number of impressions, over the users
  that have both a positive and a negative (users with one class have no AUC and are excluded
  from both numerator and denominator). NaN when no user qualifies.
- logloss: mean binary cross-entropy with probabilities clipped to [eps, 1 - eps].

`auc` and `gauc` take optional sample `weights`: [S] (one value) or [R, S] (R values at once,
e.g. R bootstrap resamples sharing one sort). A weight acts as a repeat count: integer weights
give exactly the metric of the rows repeated that many times (ties still count 1/2 per pair),
and a user's GAUC weight is its summed sample weight.
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


def _weights(weights: Any, n: int) -> np.ndarray:
    """[R, n] float64 sample weights (ones when None); finite and >= 0."""
    if weights is None:
        return np.ones((1, n))
    if hasattr(weights, "detach"):
        weights = weights.detach().cpu().numpy()
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim not in (1, 2) or w.shape[-1] != n:
        raise ValueError(f"weights must have shape [{n}] or [R, {n}] (one per label), got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and >= 0")
    return np.atleast_2d(w)


def _grouped_auc(groups: np.ndarray, y: np.ndarray, s: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted AUC of every group (ties 1/2): returns (auc [R, G] NaN where a class has no weight,
    positive weight [R, G], negative weight [R, G]). Groups in sorted order; needs len(y) > 0."""
    order = np.lexsort((s, groups))
    g, so, yo = groups[order], s[order], y[order]
    new_group = np.r_[True, g[1:] != g[:-1]]
    new_tie = new_group | np.r_[True, so[1:] != so[:-1]]
    tie_starts = np.flatnonzero(new_tie)  # [T] runs of equal (group, score)
    group_of_tie = np.cumsum(new_group)[tie_starts] - 1  # [T]
    group_first_tie = np.flatnonzero(new_group[tie_starts])  # [G] index of each group's first tie run
    wo = w[:, order]  # [R, S]
    pos = np.add.reduceat(wo * yo, tie_starts, axis=1)  # [R, T] positive weight per tie run
    neg = np.add.reduceat(wo * (1.0 - yo), tie_starts, axis=1)  # [R, T]
    cneg = np.cumsum(neg, axis=1) - neg  # [R, T] negative weight before the run (all groups)
    below = cneg - cneg[:, group_first_tie][:, group_of_tie]  # [R, T] ... within the run's group
    num = np.add.reduceat(pos * (below + 0.5 * neg), group_first_tie, axis=1)  # [R, G] won pairs
    p = np.add.reduceat(pos, group_first_tie, axis=1)  # [R, G]
    q = np.add.reduceat(neg, group_first_tie, axis=1)  # [R, G]
    den = p * q
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return a, p, q


def _out(values: np.ndarray, weights: Any) -> float | np.ndarray:
    """A float for no/1-d weights, the [R] array for 2-d weights."""
    if weights is not None and np.ndim(weights) == 2:
        return values
    return float(values[0])


def auc(labels: Any, scores: Any, weights: Any = None) -> float | np.ndarray:
    """ROC AUC with average ranks for ties; `weights` [S] -> float, [R, S] -> [R] (see module doc)."""
    y, s = _np(labels, "labels"), _np(scores, "scores")
    _check(y, (s, "scores"))
    w = _weights(weights, len(y))
    if len(y) == 0:
        return _out(np.full(w.shape[0], np.nan), weights)
    a, _, _ = _grouped_auc(np.zeros(len(y), dtype=np.int64), y, s, w)
    return _out(a[:, 0], weights)


def gauc(user_ids: Any, labels: Any, scores: Any, weights: Any = None) -> float | np.ndarray:
    """Impression-weighted mean of per-user AUC over users with both classes; with `weights` a
    user's impressions are its summed sample weight ([S] -> float, [R, S] -> [R])."""
    u = _np(user_ids, "user_ids", np.int64)
    y, s = _np(labels, "labels"), _np(scores, "scores")
    _check(y, (s, "scores"), (u.astype(np.float64), "user_ids"))
    w = _weights(weights, len(y))
    if len(y) == 0:
        return _out(np.full(w.shape[0], np.nan), weights)
    a, p, q = _grouped_auc(u, y, s, w)
    ok = np.isfinite(a)
    imp = np.where(ok, p + q, 0.0)  # [R, G]
    total = imp.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        res = np.where(total > 0, (np.where(ok, a, 0.0) * imp).sum(1) / np.where(total > 0, total, 1.0), np.nan)
    return _out(res, weights)


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


def bce_with_logits(logits: Any, labels: Any, eps: float = 1e-7) -> np.ndarray:
    """Per-sample logloss of sigmoid(logit), probabilities clipped to [eps, 1-eps] as in `logloss`."""
    p = np.clip(1.0 / (1.0 + np.exp(-_np(logits, "logits"))), eps, 1.0 - eps)
    y = _np(labels, "labels")
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
