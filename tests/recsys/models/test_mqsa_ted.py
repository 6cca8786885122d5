"""MQSA-TED: α-mixing, causality, padding invariance, TED KD wiring, L2 term, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.data.sequences import JaggedSequences
from recsys.losses import LossConfig
from recsys.models.mqsa_ted import MQSATED, MQSATEDConfig
from recsys.models.registry import build_model, parse_model_config
from recsys.models.transitions import TransitionGraph

N_ITEMS = 12


def _model(**kw: object) -> MQSATED:
    cfg = parse_model_config({"name": "mqsa_ted", "dim": 8, "max_len": 8, **kw})
    return build_model(cfg, num_items=N_ITEMS)


def _items() -> torch.Tensor:
    return torch.tensor([[0, 0, 0, 5, 7, 9, 2, 4], [0] * 8, [1, 2, 3, 4, 5, 6, 7, 8]])


def _graph() -> TransitionGraph:
    items = np.array([1, 2, 3, 4, 5, 7, 9, 2, 4, 6, 7, 8])
    sequences = JaggedSequences(user_ids=np.arange(2), offsets=np.array([0, 5, 12]), items=items)
    return TransitionGraph.from_sequences(sequences, np.array([5, 7]), max_len=50, num_items=N_ITEMS)


def test_defaults_are_the_paper() -> None:
    c = MQSATEDConfig()
    assert (c.dim, c.window, c.alpha, c.lambda_kd, c.tau, c.dropout, c.num_blocks, c.num_heads, c.l2_reg,
            c.max_len) == (64, 3, 0.5, 0.1, 0.1, 0.5, 1, 1, 1e-4, 50)


def test_alpha_mixing_shapes_and_no_nan() -> None:
    m = _model(alpha=0.3).eval()
    items = _items()
    hs, hl = m.branches(items)
    h = m(items)
    assert h.shape == (3, 8, 8) and torch.isfinite(h).all()
    assert torch.allclose(h, 0.3 * hs + 0.7 * hl)
    assert not torch.allclose(hs, hl)  # separate parameters
    assert (h[items == 0] == 0).all()
    assert torch.equal(m.user_embedding(items), h[:, -1])
    m.cfg.alpha = 1.0
    assert torch.allclose(m(items), hs)


def test_causality_and_padding_invariance() -> None:
    m = _model().eval()
    items = _items()
    items2 = items.clone()
    items2[2, 5] = 11
    h, h2 = m(items), m(items2)
    assert torch.allclose(h[:, :5], h2[:, :5], atol=1e-6)
    assert not torch.allclose(h[2, 5:], h2[2, 5:])
    short = torch.tensor([[0, 3, 4, 5], [6, 7, 8, 9]])
    long = torch.cat([torch.zeros(2, 3, dtype=torch.long), short], dim=1)
    assert torch.allclose(m(short)[:, -1], m(long)[:, -1], atol=1e-5)


def test_training_loss_is_rec_plus_kd_plus_l2() -> None:
    m = _model().eval()  # eval: dropout off, so the parts can be recomputed exactly
    with pytest.raises(RuntimeError, match="attach_teacher"):
        m.training_loss({"items": _items(), "pos": _items()}, LossConfig(kind="ce"))
    m.attach_teacher(_graph())
    items = _items()
    pos = torch.where(items != 0, (items % N_ITEMS) + 1, 0)
    loss, logs = m.training_loss({"items": items, "pos": pos}, LossConfig(kind="ce"))
    # KD by the dense definition: teacher rows × log-softmax of the student over items 1..N
    occurrences = items[items != 0]
    table = m.item_embeddings()[1:].detach()
    p = m.teacher.teacher_probs(occurrences, 0.1).float()
    q = torch.log_softmax((8 ** 0.5) * table[occurrences - 1] @ table.T / 0.1, dim=1)
    kd = float(-(p * q).sum(1).mean())
    l2 = 0.5 * 1e-4 * sum(float(t.detach().pow(2).sum()) for t in m.parameters())
    assert logs["kd_loss"] == pytest.approx(kd, rel=1e-4)
    assert logs["l2_loss"] == pytest.approx(l2, rel=1e-4)
    assert float(loss.detach()) == pytest.approx(logs["rec_loss"] + 0.1 * kd + l2, rel=1e-4)


def test_epoch_mean_reduction_scales_rec_and_kd_not_l2() -> None:
    """Both per-position terms (rec and KD, means over the same valid positions) take the batch's
    loss_scale under reduction epoch_mean; the L2 term does not."""
    m = _model().eval()
    m.attach_teacher(_graph())
    items = _items()
    pos = torch.where(items != 0, (items % N_ITEMS) + 1, 0)
    _, plain = m.training_loss({"items": items, "pos": pos}, LossConfig(kind="ce"))
    loss, scaled = m.training_loss({"items": items, "pos": pos, "loss_scale": torch.tensor(0.25)},
                                   LossConfig(kind="ce", reduction="epoch_mean"))
    assert scaled["rec_loss"] == pytest.approx(0.25 * plain["rec_loss"], rel=1e-5)
    assert scaled["kd_loss"] == pytest.approx(0.25 * plain["kd_loss"], rel=1e-5)
    assert scaled["l2_loss"] == pytest.approx(plain["l2_loss"], rel=1e-6)
    assert float(loss) == pytest.approx(scaled["rec_loss"] + 0.1 * scaled["kd_loss"] + scaled["l2_loss"], rel=1e-5)


def test_gradients_flow_with_bce_and_kd() -> None:
    m = _model(dropout=0.2).train()
    m.attach_teacher(_graph())
    items = _items()
    pos = torch.where(items != 0, (items % N_ITEMS) + 1, 0)
    batch = {"items": items, "pos": pos, "neg": torch.randint(1, N_ITEMS + 1, (3, 8, 2))}
    loss, _ = m.training_loss(batch, LossConfig(kind="bce"))
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # KD alone reaches every real item row (the student's softmax runs over all items)
    m.zero_grad()
    m.kd_loss(items).backward()
    assert (m.item_embeddings().grad[1:].abs().sum(1) > 0).all()
    assert (m.item_embeddings().grad[0] == 0).all()


def test_teacher_size_mismatch_rejected() -> None:
    sequences = JaggedSequences(user_ids=np.arange(1), offsets=np.array([0, 2]), items=np.array([1, 2]))
    with pytest.raises(ValueError, match="items"):
        _model().attach_teacher(TransitionGraph.from_sequences(sequences, np.array([2]), 50, num_items=5))


def test_trim_padding_is_exact() -> None:
    a, b = _model(trim_padding=True).eval(), _model(trim_padding=False).eval()
    b.load_state_dict(a.state_dict())
    items = torch.tensor([[0, 0, 0, 0, 0, 7, 9, 2], [0, 0, 0, 0, 3, 4, 5, 6]])
    assert torch.allclose(a(items), b(items), atol=1e-6)
