"""The plain-PyTorch reference ops against brute-force loops and the SimHash theory."""

from __future__ import annotations

import math

import pytest
import torch

from kernels.reference import (
    sdim_bucket_table,
    sdim_gather,
    simhash_codes,
    topk_aggregate,
    topk_target_search,
)


def test_simhash_codes_match_bit_definition() -> None:
    x = torch.randn(3, 4, 8)
    proj = torch.randn(8, 5 * 3)
    codes = simhash_codes(x, proj, 3)
    assert codes.shape == (3, 4, 5) and codes.dtype == torch.int64
    for idx in [(0, 0), (1, 2), (2, 3)]:
        for s in range(5):
            want = sum(int(float(x[idx] @ proj[:, s * 3 + b]) > 0) << b for b in range(3))
            assert int(codes[idx][s]) == want


@pytest.mark.parametrize("theta", [math.pi / 6, math.pi / 3, math.pi / 2])
@pytest.mark.parametrize("tau", [1, 3])
def test_simhash_collision_rate_matches_theory(theta: float, tau: int) -> None:
    """P(all tau bits agree) = (1 - theta/pi)^tau for Gaussian hyperplanes; 4-sigma binomial band."""
    gen = torch.Generator().manual_seed(int(theta * 1000) + tau)
    d, pairs, sigs = 16, 200, 200
    a = torch.nn.functional.normalize(torch.randn(pairs, d, generator=gen), dim=-1)
    r = torch.randn(pairs, d, generator=gen)
    r = torch.nn.functional.normalize(r - (r * a).sum(-1, keepdim=True) * a, dim=-1)  # orthogonal to a
    b = math.cos(theta) * a + math.sin(theta) * r  # angle(a, b) = theta exactly
    proj = torch.randn(d, sigs * tau, generator=gen)
    same = simhash_codes(a, proj, tau) == simhash_codes(b, proj, tau)  # [pairs, sigs]
    p = (1.0 - theta / math.pi) ** tau
    n = same.numel()
    rate = same.double().mean().item()
    assert abs(rate - p) < 4.0 * math.sqrt(p * (1 - p) / n) + 1e-9, (rate, p)


def _brute_table(history, codes, lengths, nb):
    b, l, d = history.shape
    s = codes.shape[2]
    out = torch.zeros(b, s, nb, d, dtype=history.dtype)
    for i in range(b):
        for j in range(int(lengths[i])):
            for k in range(s):
                out[i, k, codes[i, j, k]] += history[i, j]
    return out


def test_sdim_bucket_table_matches_loop_and_ignores_padding() -> None:
    history = torch.randn(3, 7, 4)
    codes = torch.randint(0, 8, (3, 7, 5))
    lengths = torch.tensor([0, 3, 7])
    table = sdim_bucket_table(history, codes, lengths, 8)
    torch.testing.assert_close(table, _brute_table(history, codes, lengths, 8))
    h2, c2 = history.clone(), codes.clone()
    h2[1, 3:] = 99.0
    c2[1, 3:] = -5  # padded codes may be anything, even out of range
    torch.testing.assert_close(sdim_bucket_table(h2, c2, lengths, 8), table)


def test_sdim_bucket_table_gradient() -> None:
    history = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    codes = torch.randint(0, 4, (2, 5, 2))
    lengths = torch.tensor([2, 5])
    assert torch.autograd.gradcheck(lambda h: sdim_bucket_table(h, codes, lengths, 4), (history,))


def test_sdim_bucket_table_rejects_bad_codes() -> None:
    with pytest.raises(ValueError, match="codes"):
        sdim_bucket_table(torch.randn(1, 2, 3), torch.tensor([[[0], [9]]]), torch.tensor([2]), 8)


def test_sdim_gather_matches_loop_and_zero_bucket_stays_zero() -> None:
    table = torch.randn(2, 3, 4, 5)
    table[0, 1, 2] = 0.0  # an empty bucket
    cc = torch.randint(0, 4, (2, 6, 3))
    cc[0, 0] = torch.tensor([2, 2, 2])
    out = sdim_gather(table, cc)
    for b in range(2):
        for c in range(6):
            parts = []
            for s in range(3):
                v = table[b, s, cc[b, c, s]]
                n = v.norm()
                parts.append(v / n if n > 0 else v)
            torch.testing.assert_close(out[b, c], torch.stack(parts).mean(0))
    assert torch.isfinite(out).all()
    t = table.clone().double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sdim_gather(x, cc[1:]), (t[1:].detach().requires_grad_(),))


def _brute_topk(q, keys, lengths, k):
    b, c, _ = q.shape
    s_out = torch.full((b, c, k), float("-inf"))
    i_out = torch.full((b, c, k), -1, dtype=torch.int64)
    for i in range(b):
        n = int(lengths[i])
        for j in range(c):
            sc = [(float(q[i, j] @ keys[i, t]), t) for t in range(n)]
            sc.sort(key=lambda p: (-p[0], p[1]))  # higher score first, ties: smaller index first
            for r, (v, t) in enumerate(sc[:k]):
                s_out[i, j, r], i_out[i, j, r] = v, t
    return s_out, i_out


@pytest.mark.parametrize("k", [1, 4, 12])
def test_topk_search_equals_brute_force_with_ties(k: int) -> None:
    # small integer vectors: many exact ties, so the tie rule is exercised
    q = torch.randint(-1, 2, (3, 4, 3)).float()
    keys = torch.randint(-1, 2, (3, 9, 3)).float()
    lengths = torch.tensor([0, 5, 9])
    s, i = topk_target_search(q, keys, lengths, k)
    bs, bi = _brute_topk(q, keys, lengths, k)
    assert s.dtype == torch.float32 and i.dtype == torch.int64
    assert torch.equal(i, bi)
    torch.testing.assert_close(s, bs)
    # padded positions never selected even when their keys score highest
    keys2 = keys.clone()
    keys2[1, 5:] = 100.0
    assert torch.equal(topk_target_search(q, keys2, lengths, k)[1], i)


def test_topk_search_explicit_tie_rule() -> None:
    q = torch.ones(1, 1, 2)
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 0.0]]])
    s, i = topk_target_search(q, keys, torch.tensor([4]), 3)
    assert i.tolist() == [[[2, 0, 1]]]  # score 2 first, then the three 1's by index: 0, 1 (3 dropped)
    s, i = topk_target_search(q, keys, torch.tensor([2]), 3)
    assert i.tolist() == [[[0, 1, -1]]] and s[0, 0, 2] == float("-inf")


def test_topk_aggregate_matches_manual_and_handles_empty() -> None:
    scores = torch.randn(2, 3, 4)
    indices = torch.tensor([[[0, 2, -1, -1], [1, 1, 0, 3], [-1, -1, -1, -1]],
                            [[4, 3, 2, 1], [0, -1, -1, -1], [2, 0, -1, -1]]])
    scores = scores.masked_fill(indices < 0, float("-inf"))
    values = torch.randn(2, 5, 6)
    out = topk_aggregate(scores, indices, values)
    for b in range(2):
        for c in range(3):
            ok = indices[b, c] >= 0
            if not ok.any():
                assert torch.all(out[b, c] == 0)
                continue
            w = torch.softmax(scores[b, c][ok], 0)
            torch.testing.assert_close(out[b, c], (w[:, None] * values[b, indices[b, c][ok]]).sum(0))
    s = scores.clone().requires_grad_()
    v = values.clone().requires_grad_()
    topk_aggregate(s, indices, v).sum().backward()
    assert torch.isfinite(s.grad).all() and torch.all(s.grad[indices < 0] == 0)
    assert torch.all(v.grad[0, 4] == 0)  # user 0 never retrieves row 4
    assert v.grad[1, 1].abs().sum() > 0


def test_topk_aggregate_gradcheck() -> None:
    scores = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    indices = torch.tensor([[[0, 3, -1], [2, 1, 0]]])
    values = torch.randn(1, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, v: topk_aggregate(s, indices, v), (scores, values))
