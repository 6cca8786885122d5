"""Rank metrics against hand-computed cases, ties included (pessimistic rule)."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.eval.ranking import metric_sums, rank_of_target, ranking_metrics


def test_rank_simple_no_ties() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [4.0, 3.0, 2.0, 1.0]])
    # row 0: true = col 2 (0.5); only 0.9 is higher -> rank 1. row 1: true = col 3 (lowest) -> rank 3
    assert rank_of_target(scores, torch.tensor([2, 3])).tolist() == [1, 3]


def test_rank_ties_are_pessimistic() -> None:
    scores = torch.tensor([[1.0, 1.0, 1.0, 0.0], [2.0, 5.0, 5.0, 5.0], [0.0, 0.0, 0.0, 0.0]])
    # row 0: true col 0 ties with cols 1,2 -> after both -> rank 2
    # row 1: true col 1 (5.0) ties with 2 others at 5.0 -> rank 2 (the 2.0 is below)
    # row 2: all equal -> last of 4 -> rank 3
    assert rank_of_target(scores, torch.tensor([0, 1, 2])).tolist() == [2, 2, 3]


def test_rank_masked_minus_inf_never_beats_true_item() -> None:
    scores = torch.tensor([[-math.inf, 0.2, -math.inf, 0.1]])
    assert rank_of_target(scores, torch.tensor([3])).tolist() == [1]


def test_metrics_hand_computed() -> None:
    ranks = torch.tensor([0, 1, 4, 9, 10, 25])
    m = ranking_metrics(ranks, ks=(5, 10))
    n = 6
    assert m["hr@5"] == pytest.approx(3 / n)
    assert m["hr@10"] == pytest.approx(4 / n)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / n)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / n)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 2 + 1 / 5) / n)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10) / n)


def test_metrics_from_tied_scores_end_to_end() -> None:
    # true item tied with one other at the top: pessimistic rank 1 -> HR@1 = 0, NDCG@5 = 1/log2(3)
    scores = torch.tensor([[3.0, 3.0, 1.0]])
    ranks = rank_of_target(scores, torch.tensor([0]))
    m = ranking_metrics(ranks, ks=(1, 5))
    assert m["hr@1"] == 0.0 and m["ndcg@5"] == pytest.approx(1 / math.log2(3))


def test_sums_accumulate_like_means() -> None:
    ranks = torch.randint(0, 30, (50,))
    a, b = metric_sums(ranks[:20]), metric_sums(ranks[20:])
    whole = ranking_metrics(ranks)
    for k, v in whole.items():
        assert (a[k] + b[k]) / 50 == pytest.approx(v)


def test_bad_input_named() -> None:
    with pytest.raises(ValueError, match="NaN"):
        rank_of_target(torch.tensor([[float("nan"), 1.0]]), torch.tensor([1]))
    with pytest.raises(ValueError, match="target"):
        rank_of_target(torch.zeros(2, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="no evaluated users"):
        ranking_metrics(torch.zeros(0, dtype=torch.long))
