"""Percentile bootstrap confidence intervals over users (the unit a recommender is evaluated on).

Resamples draw users with replacement; a resample is represented by each user's multiplicity, so a
mean over users is `multiplicity @ values / multiplicity.sum()` and a CTR metric weights each sample
by its user's multiplicity (`recsys.eval.ctr.auc`/`gauc` accept such weights). Resamples are drawn
`chunk` at a time (memory O(chunk x users)); the indices drawn are exactly those of one
`default_rng(seed).integers(0, n, (n_boot, n))` call, so the intervals do not depend on `chunk`.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import numpy as np

from recsys.eval.ctr import auc, bce_with_logits, gauc

log = logging.getLogger(__name__)

#: bootstrap resamples held in memory at once ([chunk, users] multiplicities)
BOOT_CHUNK = 50
CONFIDENCE = 0.95
CTR_METRICS = ("auc", "gauc", "logloss")


def multiplicity_chunks(num_units: int, n_boot: int, seed: int, chunk: int = BOOT_CHUNK) -> Iterator[np.ndarray]:
    """[c, num_units] float64 counts of each unit (user) in each of the next c <= chunk resamples."""
    if chunk < 1:
        raise ValueError(f"chunk: must be >= 1, got {chunk}")
    rng = np.random.default_rng(seed)
    for s in range(0, n_boot, chunk):
        c = min(chunk, n_boot - s)
        idx = rng.integers(0, num_units, size=(c, num_units))  # [c, U]
        flat = (np.arange(c)[:, None] * num_units + idx).ravel()
        yield np.bincount(flat, minlength=c * num_units).reshape(c, num_units).astype(np.float64)


def percentile_ci(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central `confidence` interval of the defined (finite) bootstrap samples."""
    finite = samples[np.isfinite(samples)]
    if finite.size < samples.size:  # e.g. a resample whose users all have one class (AUC/GAUC undefined)
        log.warning("bootstrap: %d of %d resamples undefined; the interval uses the %d defined ones",
                    samples.size - finite.size, samples.size, finite.size)
    if finite.size == 0:
        return float("nan"), float("nan")
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(finite, [a, 1.0 - a])
    return float(lo), float(hi)


def bootstrap_means(values: np.ndarray, n_boot: int, seed: int, chunk: int = BOOT_CHUNK) -> np.ndarray:
    """[n_boot, M] resampled means of per-user `values` [U] or [U, M]."""
    v = np.asarray(values, dtype=np.float64)
    v2 = v[:, None] if v.ndim == 1 else v  # [U, M]
    out = [(m @ v2) / m.sum(1)[:, None] for m in multiplicity_chunks(len(v2), n_boot, seed, chunk)]
    return np.concatenate(out) if out else np.empty((0, v2.shape[1]))


def bootstrap_mean_ci(values: np.ndarray, n_boot: int, seed: int, chunk: int = BOOT_CHUNK) -> tuple[float, float]:
    """Percentile CI of the mean of per-user `values` [U] over `n_boot` user resamples."""
    return percentile_ci(bootstrap_means(values, n_boot, seed, chunk)[:, 0])


def _max_rows(n_samples: int, budget: int = 4_000_000) -> int:
    return max(1, budget // max(n_samples, 1))


def ctr_bootstrap(user_ids: np.ndarray, labels: np.ndarray, logits: np.ndarray, n_boot: int | None = None,
                  seed: int = 0, chunk: int = BOOT_CHUNK) -> dict[str, Any]:
    """Point values [1] (n_boot None) or bootstrap samples [n_boot] of AUC, GAUC, logloss, resampling
    users (each sample weighted by its user's multiplicity); plus "n_users" and "n_gauc_users"."""
    users, inv = np.unique(user_ids, return_inverse=True)
    losses = bce_with_logits(logits, labels)
    loss_sum = np.bincount(inv, weights=losses, minlength=len(users))
    cnt = np.bincount(inv, minlength=len(users)).astype(np.float64)
    pos = np.bincount(inv, weights=np.asarray(labels, dtype=np.float64), minlength=len(users))
    chunks = [np.ones((1, len(users)))] if n_boot is None else multiplicity_chunks(len(users), n_boot, seed, chunk)
    out: dict[str, list[np.ndarray]] = {m: [] for m in CTR_METRICS}
    step = _max_rows(len(labels))  # rows of [rows, S] sample weights at once
    for mult in chunks:  # [c, U]
        for s in range(0, mult.shape[0], step):
            w = mult[s : s + step]
            sw = w[:, inv]  # [r, S] sample weight = its user's multiplicity
            out["auc"].append(auc(labels, logits, sw))
            out["gauc"].append(gauc(user_ids, labels, logits, sw))
            with np.errstate(invalid="ignore", divide="ignore"):
                out["logloss"].append((w @ loss_sum) / (w @ cnt))
    res: dict[str, Any] = {m: np.concatenate(v) if v else np.empty(0) for m, v in out.items()}
    res["n_users"] = len(users)
    res["n_gauc_users"] = int(((pos > 0) & (pos < cnt)).sum())
    return res
