"""SASRec block: shapes, causality, padded rows (no NaN, zero output), both LN placements."""

from __future__ import annotations

import pytest
import torch

from attention.causal import CausalSelfAttentionBlock, causal_padding_mask


def _inputs(B: int = 3, n: int = 7, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    valid = torch.ones(B, n, dtype=torch.bool)
    valid[0, :3] = False  # left padding
    valid[1, :] = False  # fully padded row
    x = torch.randn(B, n, d) * valid[..., None]
    return x, valid


def test_mask_is_causal_masks_padded_keys_and_keeps_diagonal() -> None:
    valid = torch.tensor([[False, True, True]])
    m = causal_padding_mask(valid)[0, 0]
    expected = torch.tensor([[True, False, False], [False, True, False], [False, True, True]])
    assert torch.equal(m, expected)


@pytest.mark.parametrize("norm", ["query_only", "pre_ln"])
def test_shapes_padding_zero_and_no_nan(norm: str) -> None:
    blk = CausalSelfAttentionBlock(8, 2, dropout=0.0, norm=norm).eval()
    x, valid = _inputs()
    out = blk(x, valid)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert (out[~valid] == 0).all()
    assert out[valid].abs().sum() > 0


@pytest.mark.parametrize("norm", ["query_only", "pre_ln"])
def test_causality(norm: str) -> None:
    blk = CausalSelfAttentionBlock(8, 1, dropout=0.0, norm=norm).eval()
    x, valid = _inputs()
    out = blk(x, valid)
    t = 4
    x2 = x.clone()
    x2[:, t + 1 :] += torch.randn_like(x2[:, t + 1 :]) * valid[:, t + 1 :, None]
    out2 = blk(x2, valid)
    assert torch.allclose(out[:, : t + 1], out2[:, : t + 1], atol=1e-6)
    assert not torch.allclose(out[0, t + 1 :], out2[0, t + 1 :])


def test_padded_keys_are_ignored() -> None:
    """Garbage in padded slots (keys) must not change valid outputs."""
    blk = CausalSelfAttentionBlock(8, 1, dropout=0.0).eval()
    x, valid = _inputs()
    out = blk(x, valid)
    x2 = x + torch.randn_like(x) * (~valid)[..., None]
    assert torch.allclose(out, blk(x2, valid), atol=1e-6)


def test_query_only_residual_adds_normalised_query() -> None:
    """With zero Q/K/V weights and biases the attention output is 0, so before the FFN
    x = LN(x); with the FFN zeroed the block returns LN(LN(x)) (query_only) vs x (pre_ln)."""
    x = torch.randn(1, 4, 8)
    valid = torch.ones(1, 4, dtype=torch.bool)
    for norm in ("query_only", "pre_ln"):
        blk = CausalSelfAttentionBlock(8, 1, dropout=0.0, norm=norm, eps=1e-8).eval()
        with torch.no_grad():
            for lin in (blk.v_proj, blk.ffn.fc2):
                lin.weight.zero_()
                lin.bias.zero_()
        out = blk(x, valid)
        ln = torch.nn.functional.layer_norm
        expected = ln(ln(x, (8,), eps=1e-8), (8,), eps=1e-8) if norm == "query_only" else x
        assert torch.allclose(out, expected, atol=1e-5), norm


def test_gradients_flow_and_bad_heads_rejected() -> None:
    blk = CausalSelfAttentionBlock(8, 2, dropout=0.1).train()
    x, valid = _inputs()
    x.requires_grad_(True)
    blk(x, valid).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in blk.parameters())
    with pytest.raises(ValueError, match="num_heads"):
        CausalSelfAttentionBlock(8, 3, dropout=0.0)


def test_cpu_training_path_matches_sdpa_without_dropout_and_dropout_keeps_scale() -> None:
    """The explicit CPU training path (used for fast dropout) computes the same attention as SDPA."""
    blk = CausalSelfAttentionBlock(8, 2, dropout=0.3).train()
    x, valid = _inputs()
    blk.attn_drop.p = 0.0  # explicit path, no dropout
    explicit = blk(x, valid)  # FFN dropout still on: compare attention only
    q = blk.attn_norm(x)
    mask = causal_padding_mask(valid)
    torch.manual_seed(1)
    a = blk._attend(q, x, mask)
    blk.eval()
    b = blk._attend(q, x, mask)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.isfinite(explicit).all()
    from attention.causal import Dropout

    d = Dropout(0.5).train()
    y = d(torch.ones(200_000))
    assert set(y.unique().tolist()) <= {0.0, 2.0} and abs(float(y.mean()) - 1.0) < 0.02
