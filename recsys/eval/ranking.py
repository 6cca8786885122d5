"""Rank-based next-item metrics: HR, NDCG and MRR at k, computed from the 0-based rank of the
true item among the scored candidates.

TIE RULE (pessimistic): the true item ranks after every other candidate whose score is greater
than OR EQUAL to its own, i.e. rank = #{c != true : score_c >= score_true}. A model that scores
everything equal (e.g. an untrained or collapsed one) therefore gets rank = #candidates - 1, never
an optimistic hit. Masked candidates carry score -inf; they only tie with a true item that is
itself -inf (a caller bug, which this rule still scores as a miss).

Definitions, with r the 0-based rank:
    HR@k   = 1[r < k]
    NDCG@k = 1[r < k] / log2(r + 2)       (one relevant item, so IDCG = 1)
    MRR@k  = 1[r < k] / (r + 1)           (reciprocal rank truncated at k)
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

DEFAULT_KS: tuple[int, ...] = (5, 10, 20)


def rank_of_target(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0-based rank of column `target[b]` in row `scores[b]` under the pessimistic tie rule.

    scores [B, C] float, target [B] int64 (column index of the true item) -> [B] int64.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, C], got shape {tuple(scores.shape)}")
    if target.shape != scores.shape[:1]:
        raise ValueError(f"target must be [B]={scores.shape[0]}, got shape {tuple(target.shape)}")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    true_score = scores.gather(1, target.long().unsqueeze(1))  # [B, 1]
    # >= counts the true item itself once: subtract it
    return (scores >= true_score).sum(dim=1) - 1


def metric_sums(ranks: torch.Tensor, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Sums (not means) of hr@k / ndcg@k / mrr@k over a batch of ranks, to accumulate across
    batches; divide by the number of users at the end (`finalize`)."""
    r = ranks.to(torch.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = r < k
        out[f"hr@{k}"] = float(hit.sum())
        out[f"ndcg@{k}"] = float(torch.where(hit, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r)).sum())
        out[f"mrr@{k}"] = float(torch.where(hit, 1.0 / (r + 1.0), torch.zeros_like(r)).sum())
    return out


def accumulate(total: dict[str, float], part: dict[str, float]) -> dict[str, float]:
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + v
    return total


def finalize(sums: dict[str, float], count: int) -> dict[str, float]:
    if count <= 0:
        raise ValueError("no evaluated users: cannot average metrics over an empty set")
    return {k: v / count for k, v in sums.items()}


def ranking_metrics(ranks: torch.Tensor, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean hr@k / ndcg@k / mrr@k over the given 0-based ranks."""
    return finalize(metric_sums(ranks, ks), int(ranks.numel()))


RANK_METRICS = ("hr", "ndcg", "mrr")


def rank_metric_values(ranks: np.ndarray, metric: str, k: int) -> np.ndarray:
    """Per-user HR@k / NDCG@k / MRR@k (numpy) from 0-based ranks of the single relevant item: the
    per-user values whose mean is `ranking_metrics` and which the report bootstraps."""
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks < k
    if metric == "hr":
        return hit.astype(np.float64)
    if metric == "ndcg":
        return np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    if metric == "mrr":
        return np.where(hit, 1.0 / (ranks + 1.0), 0.0)
    raise ValueError(f"metric: unknown rank metric {metric!r}; known: {RANK_METRICS}")
