"""SASRec: shapes, causality, padding invariance, no NaN on empty rows, backends, gradients."""

from __future__ import annotations

import pytest
import torch

from recsys.config import ConfigError
from recsys.losses import LossConfig
from recsys.models.registry import build_model, parse_model_config
from recsys.models.sasrec import SASRec, SASRecConfig

N_ITEMS = 30


def _model(**kw: object) -> SASRec:
    cfg = parse_model_config({"name": "sasrec", "dim": 8, "max_len": 8, "num_heads": 2, **kw})
    return build_model(cfg, num_items=N_ITEMS)


def _items() -> torch.Tensor:
    return torch.tensor([[0, 0, 0, 5, 7, 9, 2, 4], [0] * 8, [1, 2, 3, 4, 5, 6, 7, 8]])


def test_defaults_are_the_paper() -> None:
    cfg = SASRecConfig()
    assert (cfg.dim, cfg.num_blocks, cfg.num_heads, cfg.dropout, cfg.max_len, cfg.norm) == (
        50, 2, 1, 0.5, 50, "query_only")
    with pytest.raises(ConfigError, match="hidden"):
        parse_model_config({"name": "sasrec", "hidden": 3})


@pytest.mark.parametrize("norm", ["query_only", "pre_ln"])
def test_shapes_no_nan_padding_zero(norm: str) -> None:
    m = _model(norm=norm).eval()
    items = _items()
    h = m(items)
    assert h.shape == (3, 8, 8)
    assert torch.isfinite(h).all()
    assert (h[items == 0] == 0).all()
    assert m.item_embeddings().shape == (N_ITEMS + 1, 8)
    assert torch.equal(m.user_embedding(items), h[:, -1])
    assert (m.item_embeddings()[0] == 0).all()


@pytest.mark.parametrize("norm", ["query_only", "pre_ln"])
def test_causality(norm: str) -> None:
    m = _model(norm=norm).eval()
    items = _items()
    t = 4
    items2 = items.clone()
    items2[0, t + 1] = 11
    items2[2, t + 1] = 12
    h, h2 = m(items), m(items2)
    assert torch.allclose(h[:, : t + 1], h2[:, : t + 1], atol=1e-6)
    assert not torch.allclose(h[0, t + 1], h2[0, t + 1])


@pytest.mark.parametrize("norm", ["query_only", "pre_ln"])
def test_padding_invariance(norm: str) -> None:
    m = _model(norm=norm).eval()
    short = torch.tensor([[0, 3, 4, 5], [6, 7, 8, 9]])
    long = torch.cat([torch.zeros(2, 4, dtype=torch.long), short], dim=1)  # same items, more padding
    assert torch.allclose(m(short)[:, -1], m(long)[:, -1], atol=1e-5)
    assert torch.allclose(m(short), m(long)[:, 4:], atol=1e-5)


def test_items_longer_than_max_len_rejected() -> None:
    with pytest.raises(ValueError, match="items length 9 exceeds model max_len 8"):
        _model()(torch.ones(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"items must be \[B,n\]"):
        _model()(torch.ones(9, dtype=torch.long))


def test_torchrec_and_torch_backends_agree() -> None:
    a, b = _model(embedding_backend="torch").eval(), _model(embedding_backend="torchrec").eval()
    with torch.no_grad():
        for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
            assert pa.shape == pb.shape, (na, nb)
            pb.copy_(pa)
    items = _items()
    assert torch.equal(a(items), b(items))


def test_gradients_flow_and_pad_row_gets_none() -> None:
    m = _model(dropout=0.2).train()
    items = _items()
    pos = torch.roll(items, -1, dims=1) * (items != 0)
    pos[:, -1] = torch.tensor([3, 0, 9])
    batch = {"items": items, "pos": pos, "neg": torch.randint(1, N_ITEMS + 1, (3, 8, 1))}
    loss, logs = m.training_loss(batch, LossConfig(kind="bce"))
    loss.backward()
    assert logs["rec_loss"] == pytest.approx(float(loss.detach()))
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert (m.item_embeddings().grad[0] == 0).all()


def test_l2_emb_term() -> None:
    m = _model(dropout=0.0, l2_emb=0.01).eval()
    items = _items()
    batch = {"items": items, "pos": torch.where(items != 0, 1, 0)}
    loss, logs = m.training_loss(batch, LossConfig(kind="ce"))
    assert logs["l2_loss"] == pytest.approx(0.01 * float(m.item_embeddings().detach().pow(2).sum()), rel=1e-5)
    assert float(loss) == pytest.approx(logs["rec_loss"] + logs["l2_loss"], rel=1e-5)


def test_trim_padding_is_exact() -> None:
    a = _model(trim_padding=True).eval()
    b = _model(trim_padding=False).eval()
    b.load_state_dict(a.state_dict())
    items = torch.tensor([[0, 0, 0, 0, 0, 7, 9, 2], [0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 4, 5, 6, 7, 8]])
    assert torch.allclose(a(items), b(items), atol=1e-6)
    assert a(torch.zeros(2, 8, dtype=torch.long)).shape == (2, 8, 8)


def test_train_mode_dropout_is_stochastic_but_finite() -> None:
    m = _model(dropout=0.5).train()
    items = _items()
    h1, h2 = m(items), m(items)
    assert torch.isfinite(h1).all() and not torch.allclose(h1, h2)
    assert (h1[items == 0] == 0).all()
