"""SDIM hash-sampling interest: the training (collision-mask bmm) route and the BSE table route both
equal the paper's collision-mask formulation, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attention.hashing import SimHashInterest


def _paper_formulation(mod: SimHashInterest, hist: torch.Tensor, lengths: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """SDIM's bucket pooling (docs/MODELS.md, FuxiCTR's formulation): collision mask per signature, sum, l2-normalise, mean."""
    tau, s = mod.tau, mod.num_signatures
    r = mod.projections.view(-1, s, tau)
    w = 2 ** torch.arange(tau)
    bkt_seq = ((torch.einsum("bld,dst->blst", hist, r) > 0).long() * w).sum(-1)  # [B,L,S]
    bkt_q = ((torch.einsum("bcd,dst->bcst", q, r) > 0).long() * w).sum(-1)  # [B,C,S]
    valid = torch.arange(hist.shape[1])[None, :] < lengths[:, None]  # [B,L]
    coll = (bkt_seq[:, None] == bkt_q[:, :, None]) & valid[:, None, :, None]  # [B,C,L,S]
    u = torch.einsum("bcls,bld->bcsd", coll.to(hist.dtype), hist)  # [B,C,S,d]
    return F.normalize(u, dim=-1).mean(2)


def test_table_route_equals_collision_mask_formulation() -> None:
    mod = SimHashInterest(dim=8, num_hashes=12, tau=3, seed=3)
    hist, q = torch.randn(3, 20, 8), torch.randn(3, 5, 8)
    lengths = torch.tensor([0, 7, 20])
    out = mod(hist, lengths, q)
    torch.testing.assert_close(out, _paper_formulation(mod, hist, lengths, q))
    torch.testing.assert_close(mod.gather(mod.table(hist, lengths), q), out)
    assert torch.all(out[0] == 0)
    # a behaviour equal to the candidate always collides with it: its direction dominates
    same = mod(q[2:3, :1].expand(1, 1, 8).contiguous(), torch.tensor([1]), q[2:3, :1])
    torch.testing.assert_close(same[0, 0], F.normalize(q[2, 0], dim=0))


def test_projections_are_frozen_seeded_and_saved() -> None:
    a, b, c = SimHashInterest(8, 12, 3, seed=0), SimHashInterest(8, 12, 3, seed=0), SimHashInterest(8, 12, 3, seed=1)
    assert torch.equal(a.projections, b.projections) and not torch.equal(a.projections, c.projections)
    assert "projections" in a.state_dict() and not list(a.parameters())
    hist = torch.randn(1, 4, 8, requires_grad=True)
    a(hist, torch.tensor([4]), torch.randn(1, 2, 8)).sum().backward()
    assert hist.grad is not None and a.projections.grad is None


def test_incremental_table_update_equals_rebuild() -> None:
    mod = SimHashInterest(dim=6, num_hashes=9, tau=3, seed=0)
    hist = torch.randn(12, 6)
    full = mod.table(hist[None, 2:], torch.tensor([10]))[0]
    partial = mod.table(hist[None, :8], torch.tensor([8]))[0]
    updated = mod.update_table(partial, added=hist[8:], removed=hist[:2])
    torch.testing.assert_close(updated, full, atol=1e-5, rtol=1e-5)
    assert full.shape == (3, 8, 6)


def test_training_route_matches_table_route_with_fields_and_gradients() -> None:
    mod = SimHashInterest(dim=10, num_hashes=15, tau=3, seed=1)
    item, cat = torch.randn(4, 30, 6, requires_grad=True), torch.randn(4, 30, 4, requires_grad=True)
    q, lengths = torch.randn(4, 2, 10), torch.tensor([30, 0, 11, 1])
    hist = torch.cat([item, cat], dim=-1)
    fast = mod((item, cat), lengths, q)  # fields kept apart, as SDIM calls it
    ref = mod.gather(mod.table(hist, lengths), q)
    torch.testing.assert_close(fast, ref)
    g_fast = torch.autograd.grad((fast * torch.arange(10.0)).sum(), (item, cat))
    g_ref = torch.autograd.grad((ref * torch.arange(10.0)).sum(), (item, cat))
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b)
        assert torch.all(a[2, 11:] == 0) and torch.all(a[1] == 0)  # padding gets no gradient
    # the packed byte codes are the op's int64 codes
    assert torch.equal(mod.small_codes((item, cat)).long(), mod.codes(hist))


@pytest.mark.parametrize("tau", [9, 10, 15, 16])
def test_wide_signatures_pack_the_same_bits(tau: int) -> None:
    """tau 9..15 packs into int16 codes, tau 16 falls back to the op's int64 codes: same bits, same output."""
    mod = SimHashInterest(dim=5, num_hashes=2 * tau, tau=tau, seed=0)
    hist, q = torch.randn(2, 7, 5), torch.randn(2, 3, 5)
    lengths = torch.tensor([7, 4])
    assert torch.equal(mod.small_codes(hist).long(), mod.codes(hist))
    assert torch.equal(mod.small_codes((hist[..., :2], hist[..., 2:])).long(), mod.codes(hist))
    torch.testing.assert_close(mod(hist, lengths, q), _paper_formulation(mod, hist, lengths, q))
