"""Target attention for CTR: DIN's scoring MLP, full masked target attention, TWIN/DARE two-stage
(top-k search + softmax over the k), TWIN-hard category search, FuxiCTR-style multi-head target
attention (SDIM's short-term interest).

Shapes: B users, C candidates per user, L history slots (right-padded, `lengths` [B]), E/da/dr dims.
The retrieval stage calls the op names of docs/INTERFACES.md through `kernels.ops`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from kernels import ops


def _valid(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]  # [B,L]


def masked_softmax(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to `valid` (broadcastable bool); all-invalid rows -> 0.

    Padded slots get exactly zero weight and zero gradient, whatever their score.
    """
    valid = valid.expand_as(scores)
    m = scores.masked_fill(~valid, float("-inf")).amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    e = torch.exp(scores.masked_fill(~valid, 0.0) - m) * valid.to(scores.dtype)
    return e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)


def masked_softmax_attend(scores: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """softmax over valid slots of scores [B,C,L], weighted sum of values [B,L,dv] -> [B,C,dv]
    (zero output for an empty history)."""
    w = masked_softmax(scores, _valid(lengths, scores.shape[-1])[:, None, :])  # [B,C,L]
    return torch.matmul(w, values)  # [B,C,dv]


class DINScore(nn.Module):
    """DIN's learnable attention score, as in DARE's code (`attn_func=learnable`):
    MLP([q, k, q-k, q*k]) -> 36 -> PReLU(0.1) -> 1, divided by the embedding width."""

    def __init__(self, dim: int, hidden: int = 36) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(4 * dim, hidden), nn.PReLU(num_parameters=1, init=0.1), nn.Linear(hidden, 1))

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """q [B,C,E], k [B,L,E] -> scores [B,C,L]."""
        b, c, e = q.shape
        l = k.shape[1]
        qq = q[:, :, None, :].expand(b, c, l, e)
        kk = k[:, None, :, :].expand(b, c, l, e)
        x = torch.cat([qq, kk, qq - kk, qq * kk], dim=-1)  # [B,C,L,4E]
        return self.mlp(x).squeeze(-1) / self.dim  # [B,C,L]


def full_target_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Dot-product target attention over the whole history (q pre-scaled) -> [B,C,dr]."""
    scores = torch.matmul(q, keys.transpose(1, 2))  # [B,C,L]
    return masked_softmax_attend(scores, values, lengths)


def two_stage_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    lengths: torch.Tensor,
    k: int,
    indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TWIN/DARE: stage 1 top-k search by dot product, stage 2 softmax over the k.

    q [B,C,da] (pre-scaled), keys [B,L,da], values [B,L,dr], lengths [B] -> (u [B,C,dr], indices [B,C,k]).
    The search has no gradient; the k scores are recomputed differentiably from q and keys, so the
    attention path's gradient reaches q/keys and the representation path's reaches values only.
    Pass `indices` to skip the search (e.g. TWIN-hard).
    """
    if indices is None:
        _, indices = ops.topk_target_search(q.detach(), keys.detach(), lengths, k)
    b, c, kk = indices.shape
    da = keys.shape[-1]
    if keys.shape[1] == 0:
        scores = q.new_zeros(b, c, kk)
    else:
        idx = indices.clamp_min(0).reshape(b, c * kk, 1).expand(b, c * kk, da)
        picked = keys.gather(1, idx).reshape(b, c, kk, da)  # [B,C,k,da]
        scores = (q[:, :, None, :] * picked).sum(-1)  # [B,C,k]
    return ops.topk_aggregate(scores, indices, values), indices


def hard_search_indices(
    hist_cats: torch.Tensor, lengths: torch.Tensor, target_cats: torch.Tensor, k: int
) -> torch.Tensor:
    """TWIN-hard (SIM-style): the k most recent same-category behaviours, shortfall filled with the
    most recent others; -1 for empty slots.

    hist_cats [B,L], lengths [B], target_cats [B,C] -> indices [B,C,k] (int64).
    """
    b, l = hist_cats.shape
    c = target_cats.shape[1]
    out = torch.full((b, c, k), -1, dtype=torch.int64, device=hist_cats.device)
    if l == 0:
        return out
    j = torch.arange(l, device=hist_cats.device)
    valid = _valid(lengths, l)[:, None, :]  # [B,1,L]
    same = hist_cats[:, None, :] == target_cats[:, :, None]  # [B,C,L]
    prio = torch.where(same, 2 * l + j, l + j)  # same-category first, then recency
    prio = torch.where(valid, prio, torch.full_like(prio, -1))
    top, idx = torch.sort(prio, dim=-1, descending=True, stable=True)
    kk = min(k, l)
    out[..., :kk] = torch.where(top[..., :kk] >= 0, idx[..., :kk], torch.full_like(idx[..., :kk], -1))
    return out


class MultiHeadTargetAttention(nn.Module):
    """FuxiCTR's MultiHeadTargetAttention (use_qkvo=True): bias-free W_q/W_k/W_v, scaled dot
    product per head over the valid behaviours, then W_o back to the input width."""

    def __init__(self, dim: int, attention_dim: int = 64, num_heads: int = 2, use_scale: bool = True) -> None:
        super().__init__()
        if attention_dim % num_heads:
            raise ValueError(f"attention_dim {attention_dim} must be divisible by num_heads {num_heads}")
        self.h, self.dh = num_heads, attention_dim // num_heads
        self.scale = 1.0 / math.sqrt(self.dh) if use_scale else 1.0
        self.w_q = nn.Linear(dim, attention_dim, bias=False)
        self.w_k = nn.Linear(dim, attention_dim, bias=False)
        self.w_v = nn.Linear(dim, attention_dim, bias=False)
        self.w_o = nn.Linear(attention_dim, dim, bias=False)

    def forward(self, q: torch.Tensor, hist: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """q [B,C,E], hist [B,L,E], lengths [B] -> [B,C,E]."""
        b, c, _ = q.shape
        l = hist.shape[1]
        qh = self.w_q(q).view(b, c, self.h, self.dh).transpose(1, 2)  # [B,h,C,dh]
        kh = self.w_k(hist).view(b, l, self.h, self.dh).transpose(1, 2)  # [B,h,L,dh]
        vh = self.w_v(hist).view(b, l, self.h, self.dh).transpose(1, 2)  # [B,h,L,dh]
        scores = torch.matmul(qh, kh.transpose(-1, -2)) * self.scale  # [B,h,C,L]
        w = masked_softmax(scores, _valid(lengths, l)[:, None, None, :])  # [B,h,C,L]
        out = torch.matmul(w, vh).transpose(1, 2).reshape(b, c, self.h * self.dh)  # [B,C,h*dh]
        return self.w_o(out)
