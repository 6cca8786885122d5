"""SASRec's causal self-attention block (docs/MODELS.md, SASRec), reused by MQSA-TED.

Two layer-norm placements:
- "query_only" (official kang205 TF code, pmixer <= 9f6a02b, MQSA-TED's code): only the query is
  normalised, K and V come from the raw input, and both residuals add the *normalised* input:
  Q = LN(x); x = Q + Attn(Q, x, x); Z = LN(x); x = Z + FFN(Z).
- "pre_ln" (standard Pre-LN, pmixer `--norm_first`): x = q + Dropout(Attn(LN(q), LN(x), LN(x)));
  x = x + FFN(LN(x)), where q is the query input (x itself for SASRec) and the same LN normalises
  query, keys and values.

As in the official code, Q/K/V are dense layers with bias and there is no output projection.
Padded keys are masked. With left padding a padded query row has no valid key, which would make
the softmax NaN; every query is therefore allowed to see itself, and padded query outputs are
zeroed afterwards (TF's query mask), so nothing padded ever leaks into valid positions.

Speed (CPU): `F.scaled_dot_product_attention` is used except when training with attention dropout
on the CPU, where the same math runs explicitly so the dropout mask can come from `torch.rand`:
CPU `bernoulli_` (what nn.Dropout and SDPA's dropout use) measured 55 ms vs 14 ms for `rand <`
on a [128,1,200,200] tensor, 1 thread — it was 30% of a SASRec training step.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["query_only", "pre_ln"]


def causal_padding_mask(valid: torch.Tensor) -> torch.Tensor:
    """valid [B,n] bool -> attention mask [B,1,n,n] (True = may attend): causal, padded keys
    masked, and the diagonal always allowed so that no row is fully masked."""
    n = valid.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()  # [n,n]
    eye = torch.eye(n, dtype=torch.bool, device=valid.device)
    allowed = causal & (valid[:, None, :] | eye)  # [B,n,n]
    return allowed[:, None]  # [B,1,n,n]


class Dropout(nn.Module):
    """Inverted dropout whose keep-mask is drawn with torch.rand (faster than bernoulli_ on CPU)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        scale = torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))  # 0 or 1/(1-p), in place
        return x * scale


class PointWiseFeedForward(nn.Module):
    """d -> d -> d with ReLU and dropout after each layer (TF's 1x1 convolutions)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.relu(self.fc1(x)))))


class CausalSelfAttentionBlock(nn.Module):
    """One SASRec block: causal multi-head self-attention + point-wise FFN.

    forward(x [B,n,d], valid [B,n] bool, query [B,n,d] | None) -> [B,n,d], padded rows zero.
    `query` replaces x in the query path only (MQSA's L-query); None means x.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float, norm: Norm = "query_only",
                 eps: float = 1e-8) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if norm not in ("query_only", "pre_ln"):
            raise ValueError(f"norm must be 'query_only' or 'pre_ln', got {norm!r}")
        self.num_heads, self.norm, self.dropout = num_heads, norm, dropout
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.ffn = PointWiseFeedForward(dim, dropout)
        self.resid_drop = Dropout(dropout) if norm == "pre_ln" else nn.Identity()
        self.attn_drop = Dropout(dropout)

    def _attend(self, q_in: torch.Tensor, kv_in: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, n, d = q_in.shape
        h = self.num_heads
        q = self.q_proj(q_in).view(B, n, h, d // h).transpose(1, 2)  # [B,h,n,dh]
        k = self.k_proj(kv_in).view(B, n, h, d // h).transpose(1, 2)  # [B,h,n,dh]
        v = self.v_proj(kv_in).view(B, n, h, d // h).transpose(1, 2)  # [B,h,n,dh]
        if self.training and self.dropout > 0 and q.device.type == "cpu":
            att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d // h))  # [B,h,n,n]
            att = torch.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
            out = self.attn_drop(att) @ v  # [B,h,n,dh]
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)  # [B,h,n,dh]
        return out.transpose(1, 2).reshape(B, n, d)  # [B,n,d]

    def forward(self, x: torch.Tensor, valid: torch.Tensor, query: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        q_src = x if query is None else query
        if mask is None:
            mask = causal_padding_mask(valid)
        keep = valid[..., None].to(x.dtype)  # [B,n,1]
        if self.norm == "query_only":
            q = self.attn_norm(q_src)  # [B,n,d]
            x = q + self._attend(q, x, mask) * keep  # residual to LN(query)
            z = self.ffn_norm(x)
            x = z + self.ffn(z)
        else:
            kv = self.attn_norm(x)  # one LN for query, key and value (standard Pre-LN)
            q = kv if query is None else self.attn_norm(q_src)
            x = q_src + self.resid_drop(self._attend(q, kv, mask)) * keep
            x = x + self.ffn(self.ffn_norm(x))
        return x * keep  # [B,n,d], padded rows zero
