"""Next-item losses on tiny hand-computed cases (d = 1, N = 3 items)."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.config import ConfigError, parse_config
from recsys.losses import LossConfig, next_item_loss

TABLE = torch.tensor([[0.0], [1.0], [2.0], [-1.0]])  # row 0 = padding, items 1..3
HIDDEN = torch.tensor([[[0.5], [1.0], [3.0]]])  # [1,3,1]
POS = torch.tensor([[2, 1, 0]])  # position 2 invalid


def _sp(x: float) -> float:  # softplus = -log σ(-x)
    return math.log1p(math.exp(x))


def test_bce_one_negative_is_the_paper() -> None:
    neg = torch.tensor([[[3], [2], [1]]])
    got = next_item_loss(HIDDEN, TABLE, {"pos": POS, "neg": neg}, LossConfig(kind="bce"))
    # t=0: pos logit 1.0, neg logit -0.5; t=1: pos 1.0, neg 2.0
    expected = ((_sp(-1.0) + _sp(-0.5)) + (_sp(-1.0) + _sp(2.0))) / 2
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_bce_many_negatives_mean_and_zero_ignored() -> None:
    neg = torch.tensor([[[3, 1], [2, 0], [1, 1]]])
    got = next_item_loss(HIDDEN, TABLE, {"pos": POS, "neg": neg}, LossConfig(kind="bce", num_negatives=2))
    expected = ((_sp(-1.0) + (_sp(-0.5) + _sp(0.5)) / 2) + (_sp(-1.0) + _sp(2.0))) / 2
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_full_softmax_ce_excludes_pad_column() -> None:
    got = next_item_loss(HIDDEN, TABLE, {"pos": POS}, LossConfig(kind="ce"))
    lse0 = math.log(math.exp(0.5) + math.exp(1.0) + math.exp(-0.5))  # t=0 logits 0.5, 1, -0.5
    lse1 = math.log(math.exp(1.0) + math.exp(2.0) + math.exp(-1.0))  # t=1 logits 1, 2, -1
    expected = ((lse0 - 1.0) + (lse1 - 1.0)) / 2
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_sampled_softmax_logq_and_accidental_hits() -> None:
    hidden, pos = HIDDEN[:, :1], POS[:, :1]  # one valid position: h = 0.5, positive item 2
    shared = torch.tensor([1, 2, 3, 0])  # 2 = accidental hit, 0 = padding: both masked
    logq = torch.log(torch.tensor([0.5, 0.25, 0.25, 0.1]))
    batch = {"pos": pos, "shared_neg": shared, "shared_neg_logq": logq}
    got = next_item_loss(hidden, TABLE, batch, LossConfig(kind="sampled_softmax", num_negatives=4))
    # corrected negative logits: s - log(M·Q): item 1: 0.5 - log 2, item 3: -0.5 - log 1
    expected = -1.0 + math.log(math.exp(1.0) + math.exp(0.5 - math.log(2.0)) + math.exp(-0.5))
    assert float(got) == pytest.approx(expected, rel=1e-6)
    plain = next_item_loss(hidden, TABLE, {"pos": pos, "shared_neg": shared},
                           LossConfig(kind="sampled_softmax", logq_correction=False))
    assert float(plain) == pytest.approx(-1.0 + math.log(math.exp(1.0) + math.exp(0.5) + math.exp(-0.5)), rel=1e-6)


def test_errors_name_the_problem() -> None:
    with pytest.raises(KeyError, match="neg"):
        next_item_loss(HIDDEN, TABLE, {"pos": POS}, LossConfig(kind="bce"))
    with pytest.raises(KeyError, match="shared_neg_logq"):
        next_item_loss(HIDDEN, TABLE, {"pos": POS, "shared_neg": torch.tensor([1])},
                       LossConfig(kind="sampled_softmax"))
    with pytest.raises(ValueError, match="no valid position"):
        next_item_loss(HIDDEN, TABLE, {"pos": torch.zeros_like(POS)}, LossConfig(kind="ce"))
    with pytest.raises(ValueError, match="shape"):
        next_item_loss(HIDDEN, TABLE, {"pos": POS[:, :2]}, LossConfig(kind="ce"))
    with pytest.raises(ConfigError, match="kind"):
        parse_config({"kind": "bpr"}, LossConfig)


def test_gradient_reaches_table_not_pad_row() -> None:
    table = TABLE.clone().requires_grad_(True)
    hidden = HIDDEN.clone().requires_grad_(True)
    for kind in ("bce", "ce", "sampled_softmax"):
        batch = {"pos": POS, "neg": torch.tensor([[[3], [0], [0]]]), "shared_neg": torch.tensor([1, 3, 0]),
                 "shared_neg_logq": torch.zeros(3)}
        next_item_loss(hidden, table, batch, LossConfig(kind=kind)).backward()
        assert table.grad[0].item() == 0.0 and table.grad[1:].abs().sum() > 0, kind
        assert hidden.grad[0, 2].item() == 0.0, kind  # invalid position gets nothing
        table.grad = hidden.grad = None


def test_epoch_mean_reduction_scales_the_batch_mean() -> None:
    neg = torch.tensor([[[3], [2], [1]]])
    cfg = LossConfig(kind="bce", reduction="epoch_mean")
    mean = next_item_loss(HIDDEN, TABLE, {"pos": POS, "neg": neg}, LossConfig(kind="bce"))
    # 2 valid positions, the epoch's mean is 4 per batch: the batch's sum over positions / 4
    scaled = next_item_loss(HIDDEN, TABLE, {"pos": POS, "neg": neg, "loss_scale": torch.tensor(0.5)}, cfg)
    assert float(scaled) == pytest.approx(float(mean) * 2 / 4, rel=1e-6)
    with pytest.raises(KeyError, match="loss_scale"):
        next_item_loss(HIDDEN, TABLE, {"pos": POS, "neg": neg}, cfg)
