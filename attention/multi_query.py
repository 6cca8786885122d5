"""MQSA's long-query (L-query) block (docs/MODELS.md, MQSA-TED): the same block as SASRec's, but the
query at step t is the causal window mean of the last L items of the block's input (the current
item and the L-1 before it), with padded slots excluded from the count."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attention.causal import CausalSelfAttentionBlock, Norm


def causal_window_mean(x: torch.Tensor, valid: torch.Tensor, window: int) -> torch.Tensor:
    """x [B,n,d], valid [B,n] bool -> [B,n,d]: mean of x[t-window+1..t] over valid slots
    (zero where no slot in the window is valid)."""
    if window < 1:
        raise ValueError(f"window (L) must be >= 1, got {window}")
    m = valid.to(x.dtype)[..., None]  # [B,n,1]
    xs = F.pad(x * m, (0, 0, window - 1, 0)).unfold(1, window, 1).sum(-1)  # [B,n,d]
    cnt = F.pad(m, (0, 0, window - 1, 0)).unfold(1, window, 1).sum(-1)  # [B,n,1]
    return xs / cnt.clamp_min(1.0)


class MultiQueryBlock(nn.Module):
    """L-query block with its own parameters: query = causal_window_mean(x, L), K = V = x."""

    def __init__(self, dim: int, num_heads: int, dropout: float, window: int,
                 norm: Norm = "query_only", eps: float = 1e-8) -> None:
        super().__init__()
        self.window = window
        self.block = CausalSelfAttentionBlock(dim, num_heads, dropout, norm=norm, eps=eps)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        query = causal_window_mean(x, valid, self.window)  # [B,n,d]
        return self.block(x, valid, query=query, mask=mask)
