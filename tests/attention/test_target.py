"""Target attention building blocks: masking, two-stage search/aggregate, TWIN-hard, multi-head."""

from __future__ import annotations

import torch

from attention.target import (
    DINScore,
    MultiHeadTargetAttention,
    full_target_attention,
    hard_search_indices,
    masked_softmax_attend,
    two_stage_attention,
)


def test_masked_softmax_attend_equals_softmax_on_valid_prefix() -> None:
    scores, values = torch.randn(3, 2, 6), torch.randn(3, 6, 4)
    lengths = torch.tensor([0, 2, 6])
    out = masked_softmax_attend(scores, values, lengths)
    assert torch.all(out[0] == 0)
    for b in (1, 2):
        n = int(lengths[b])
        torch.testing.assert_close(out[b], torch.softmax(scores[b, :, :n], -1) @ values[b, :n])
    s2, v2 = scores.clone(), values.clone()
    s2[1, :, 2:] = 1e4
    v2[1, 2:] = 1e6  # padded scores and values must not leak
    torch.testing.assert_close(masked_softmax_attend(s2, v2, lengths), out)


def test_two_stage_with_k_covering_history_equals_full_attention() -> None:
    q, keys, values = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 6)
    lengths = torch.tensor([3, 5])
    u, idx = two_stage_attention(q, keys, values, lengths, k=8)
    torch.testing.assert_close(u, full_target_attention(q, keys, values, lengths))
    assert torch.all(idx[0, :, 3:] == -1)


def test_two_stage_gradient_reaches_only_selected_keys() -> None:
    q = torch.randn(1, 1, 4, requires_grad=True)
    keys = torch.randn(1, 10, 4, requires_grad=True)
    values = torch.randn(1, 10, 3, requires_grad=True)
    u, idx = two_stage_attention(q, keys, values, torch.tensor([10]), k=3)
    u.sum().backward()
    chosen = set(idx.flatten().tolist())
    for j in range(10):
        nonzero = keys.grad[0, j].abs().sum() > 0
        assert bool(nonzero) == (j in chosen)
        assert bool(values.grad[0, j].abs().sum() > 0) == (j in chosen)
    assert q.grad.abs().sum() > 0


def test_hard_search_prefers_recent_same_category_then_recent_others() -> None:
    cats = torch.tensor([[5, 1, 5, 2, 5, 3, 0, 0]])
    idx = hard_search_indices(cats, torch.tensor([6]), torch.tensor([[5, 9]]), k=4)
    assert idx[0, 0].tolist() == [4, 2, 0, 5]  # same category newest first, then the newest other
    assert idx[0, 1].tolist() == [5, 4, 3, 2]  # no match: most recent
    idx = hard_search_indices(cats, torch.tensor([2]), torch.tensor([[5]]), k=4)
    assert idx[0, 0].tolist() == [0, 1, -1, -1]


def test_multi_head_target_attention_ignores_padding_and_matches_manual() -> None:
    torch.manual_seed(1)
    mha = MultiHeadTargetAttention(6, attention_dim=8, num_heads=2)
    q, hist = torch.randn(2, 3, 6), torch.randn(2, 5, 6)
    lengths = torch.tensor([2, 5])
    out = mha(q, hist, lengths)
    hist2 = hist.clone()
    hist2[0, 2:] = 50.0
    torch.testing.assert_close(mha(q, hist2, lengths), out)
    # manual per-head computation for user 0
    qh, kh, vh = mha.w_q(q[0]), mha.w_k(hist[0, :2]), mha.w_v(hist[0, :2])
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        w = torch.softmax(qh[:, sl] @ kh[:, sl].T / 2.0, -1)
        heads.append(w @ vh[:, sl])
    torch.testing.assert_close(out[0], mha.w_o(torch.cat(heads, -1)))


def test_din_score_shape_and_scaling() -> None:
    score = DINScore(4)
    q, k = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    s = score(q, k)
    assert s.shape == (2, 3, 5)
    x = torch.cat([q[0, 1], k[0, 2], q[0, 1] - k[0, 2], q[0, 1] * k[0, 2]])
    torch.testing.assert_close(s[0, 1, 2], score.mlp(x)[0] / 4)
