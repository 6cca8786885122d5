"""MQSA L-query: causal window mean (padding excluded from the count) and its block."""

from __future__ import annotations

import pytest
import torch

from attention.multi_query import MultiQueryBlock, causal_window_mean


def test_window_mean_hand_values() -> None:
    x = torch.tensor([[[0.0], [0.0], [1.0], [2.0], [4.0], [8.0]]])  # [1,6,1], slots 0,1 padded
    valid = torch.tensor([[False, False, True, True, True, True]])
    out = causal_window_mean(x, valid, 3)[0, :, 0]
    expected = torch.tensor([0.0, 0.0, 1.0, 1.5, 7 / 3, 14 / 3])
    assert torch.allclose(out, expected)
    assert torch.allclose(causal_window_mean(x, valid, 1), x)


def test_window_mean_ignores_padded_values() -> None:
    x = torch.randn(2, 5, 4)
    valid = torch.tensor([[False, True, True, True, True], [True] * 5])
    garbage = x + 100 * (~valid)[..., None]
    assert torch.allclose(causal_window_mean(x, valid, 3), causal_window_mean(garbage, valid, 3))
    with pytest.raises(ValueError, match="window"):
        causal_window_mean(x, valid, 0)


def test_block_causal_no_nan_and_padding_zero() -> None:
    blk = MultiQueryBlock(8, 1, dropout=0.0, window=3).eval()
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[0, :2] = False
    valid[1] = False
    x = torch.randn(2, 6, 8) * valid[..., None]
    out = blk(x, valid)
    assert torch.isfinite(out).all() and (out[~valid] == 0).all()
    x2 = x.clone()
    x2[0, 4:] += 1.0
    out2 = blk(x2, valid)
    assert torch.allclose(out[:, :4], out2[:, :4], atol=1e-6)
    assert not torch.allclose(out[0, 4:], out2[0, 4:])


def test_window_one_equals_plain_block() -> None:
    """L = 1 makes the query the item itself, i.e. the SASRec block with the same weights."""
    blk = MultiQueryBlock(8, 1, dropout=0.0, window=1).eval()
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[0, :2] = False
    x = torch.randn(2, 5, 8) * valid[..., None]
    assert torch.allclose(blk(x, valid), blk.block(x, valid), atol=1e-6)
