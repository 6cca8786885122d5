"""AUC / GAUC / logloss on hand-computed cases (ties included) and against brute-force pair counting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys.eval.ctr import auc, ctr_metrics, gauc, logloss


def _pairs_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def test_auc_hand_cases_with_ties() -> None:
    assert auc([1, 0], [0.9, 0.1]) == 1.0
    assert auc([1, 0], [0.1, 0.9]) == 0.0
    assert auc([1, 0], [0.5, 0.5]) == 0.5
    # pairs: .9>.1, .9>.5, .5>.1, .5=.5 (half) -> 3.5 / 4
    assert auc([1, 0, 1, 0], [0.9, 0.1, 0.5, 0.5]) == pytest.approx(0.875)
    assert math.isnan(auc([1, 1], [0.2, 0.3]))


def test_auc_matches_pair_counting_on_tied_random_scores() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500).astype(float)
    s = rng.integers(0, 10, 500).astype(float)  # heavy ties
    assert auc(y, s) == pytest.approx(_pairs_auc(y, s), abs=1e-12)
    assert auc(torch.tensor(y), torch.tensor(s)) == pytest.approx(_pairs_auc(y, s), abs=1e-12)


def test_gauc_hand_case() -> None:
    # user 1 (3 impressions): pos .2 vs negs .1, .3 -> 0.5; user 2 (2): tie -> 0.5 ... make them differ
    users = [1, 1, 1, 2, 2, 3, 3]
    labels = [1, 0, 0, 1, 0, 1, 1]
    scores = [0.2, 0.1, 0.3, 0.5, 0.5, 0.1, 0.9]
    # user 1 AUC 0.5 (w=3), user 2 AUC 0.5 (w=2), user 3 has one class -> excluded
    assert gauc(users, labels, scores) == pytest.approx(0.5)
    scores = [0.2, 0.1, 0.15, 0.9, 0.5, 0.1, 0.9]
    # user 1 AUC 1.0 (w=3), user 2 AUC 1.0 (w=2)
    assert gauc(users, labels, scores) == pytest.approx(1.0)
    scores = [0.2, 0.1, 0.15, 0.5, 0.5, 0.1, 0.9]
    # user 1: 1.0 x 3, user 2: tie 0.5 x 2 -> (3 + 1) / 5
    assert gauc(users, labels, scores) == pytest.approx(0.8)
    assert math.isnan(gauc([1, 2], [1, 0], [0.3, 0.4]))


def test_gauc_matches_per_user_loop() -> None:
    rng = np.random.default_rng(1)
    u = rng.integers(0, 30, 600)
    y = rng.integers(0, 2, 600).astype(float)
    s = rng.integers(0, 5, 600).astype(float)
    num = den = 0.0
    for user in np.unique(u):
        m = u == user
        if 0 < y[m].sum() < m.sum():
            num += _pairs_auc(y[m], s[m]) * m.sum()
            den += m.sum()
    assert gauc(u, y, s) == pytest.approx(num / den, abs=1e-12)


def test_logloss_hand_case_and_clipping() -> None:
    assert logloss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert math.isfinite(logloss([1, 0], [0.0, 1.0]))  # clipped, not inf
    m = ctr_metrics([1, 1], [1, 0], torch.tensor([2.0, -1.0]))
    assert m["auc"] == 1.0 and m["gauc"] == 1.0
    assert m["logloss"] == pytest.approx(-(math.log(1 / (1 + math.exp(-2))) + math.log(1 - 1 / (1 + math.exp(1)))) / 2)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="scores"):
        auc([1, 0], [0.1])
    with pytest.raises(ValueError, match="labels"):
        auc([2, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="scores"):
        auc([1, 0], [float("nan"), 0.2])


def test_unit_weights_equal_the_unweighted_metrics() -> None:
    rng = np.random.default_rng(2)
    u = rng.integers(0, 25, 400)
    y = rng.integers(0, 2, 400).astype(float)
    s = rng.integers(0, 6, 400).astype(float)  # heavy ties
    ones = np.ones(400)
    assert auc(y, s, ones) == pytest.approx(_pairs_auc(y, s), abs=1e-12)
    assert auc(y, s, ones) == pytest.approx(auc(y, s), abs=1e-12)
    assert gauc(u, y, s, ones) == pytest.approx(gauc(u, y, s), abs=1e-12)
    both = auc(y, s, np.stack([ones, 2.0 * ones]))  # [R, S] -> [R]; a constant scale changes nothing
    assert both.shape == (2,) and both == pytest.approx([auc(y, s)] * 2, abs=1e-12)


def test_integer_weights_equal_repeated_rows() -> None:
    rng = np.random.default_rng(3)
    u = rng.integers(0, 20, 300)
    y = rng.integers(0, 2, 300).astype(float)
    s = rng.integers(0, 5, 300).astype(float)
    w = rng.integers(0, 4, size=(3, 300)).astype(float)  # zeros drop rows, as in a bootstrap resample
    w[2, u == u[0]] = 0.0  # a user absent from the resample leaves GAUC's numerator and denominator
    got_auc, got_gauc = auc(y, s, w), gauc(u, y, s, w)
    for r in range(3):
        dup = np.repeat(np.arange(300), w[r].astype(int))
        assert got_auc[r] == pytest.approx(_pairs_auc(y[dup], s[dup]), abs=1e-12)
        assert got_gauc[r] == pytest.approx(gauc(u[dup], y[dup], s[dup]), abs=1e-12)
        assert auc(y, s, w[r]) == pytest.approx(got_auc[r], abs=1e-12)  # 1-d weights -> the same float
    assert not np.allclose(got_auc, auc(y, s))  # the weights do change the value


def test_bad_weights_are_named() -> None:
    with pytest.raises(ValueError, match="weights"):
        auc([1, 0], [0.1, 0.2], [1.0])
    with pytest.raises(ValueError, match="weights"):
        gauc([1, 1], [1, 0], [0.1, 0.2], [1.0, -1.0])
    assert math.isnan(auc([1, 0], [0.1, 0.2], [1.0, 0.0]))  # no negative weight left
