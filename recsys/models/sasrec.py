"""SASRec (Kang & McAuley, ICDM 2018), docs/MODELS.md.

X⁰ = Dropout(√d·M[s] + P) × mask; blocks of causal self-attention + point-wise FFN
(attention/causal.py; norm "query_only" = official code, "pre_ln" = standard Pre-LN);
F = LN(X) × mask; scores r_{t,i} = <F_t, M_i> with the shared item table M (row 0 = padding).

Positions: learned P ∈ R^{max_len×d}; a window of n <= max_len slots uses the last n rows, so the
most recent item always gets P[max_len-1] (P encodes recency under left padding). Init as pmixer:
xavier-normal on every >= 2-D parameter, then row 0 of the item table zeroed.

Speed: with `trim_padding` (default) the leading columns that are padding in every row of the
batch are cut off before the blocks and the output is zero-padded back. This is exact: padded slots
never reach valid ones and give zero output, and positions are aligned from the right (tested);
on Games (mean length 9 at max_len 200) it removes most of the attention work.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from attention.causal import CausalSelfAttentionBlock, Dropout, causal_padding_mask
from recsys.config import StrictModel
from recsys.losses import LossConfig, next_item_loss
from recsys.models.item_embedding import ItemEmbedding


class SASRecConfig(StrictModel):
    name: Literal["sasrec"] = "sasrec"
    dim: int = Field(50, ge=1)  # hidden_units
    num_blocks: int = Field(2, ge=1)
    num_heads: int = Field(1, ge=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)  # paper: 0.5 Amazon/Steam, 0.2 ML-1M
    max_len: int = Field(50, ge=1)  # paper: 50, 200 for ML-1M
    norm: Literal["query_only", "pre_ln"] = "query_only"
    ln_eps: float = 1e-8
    l2_emb: float = Field(0.0, ge=0.0)  # L2 on the item table, as official `l2_emb` (loss term)
    embedding_backend: Literal["torch", "torchrec"] = "torchrec"  # see recsys/models/item_embedding.py
    trim_padding: bool = True  # exact speed-up, see module docstring


class SequenceEncoderBase(nn.Module):
    """Shared input path of SASRec and MQSA-TED: item table, positions, dropout, padding mask."""

    item_emb: ItemEmbedding
    pos_emb: nn.Parameter

    def _check_items(self, items: torch.Tensor) -> None:
        if items.dim() != 2:
            raise ValueError(f"items must be [B,n], got shape {tuple(items.shape)}")
        if items.shape[1] > self.max_len:
            raise ValueError(f"items length {items.shape[1]} exceeds model max_len {self.max_len}")

    def trim(self, items: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Drop leading columns that are padding in every row: (items[:, start:], start)."""
        if not self.cfg.trim_padding:
            return items, 0
        cols = (items != 0).any(0)  # [n]
        start = int(cols.to(torch.int8).argmax()) if bool(cols.any()) else items.shape[1] - 1
        return items[:, start:], start

    def embed(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """items [B,n] -> (X⁰ [B,n,d], valid [B,n] bool)."""
        self._check_items(items)
        n = items.shape[1]
        valid = items != 0  # [B,n]
        x = self.item_emb(items) * math.sqrt(self.dim) + self.pos_emb[self.max_len - n:]  # [B,n,d]
        x = self.emb_drop(x) * valid[..., None].to(x.dtype)
        return x, valid

    def item_embeddings(self) -> torch.Tensor:
        """[N+1,d] the shared item table (row 0 = padding)."""
        return self.item_emb.weight

    def user_embedding(self, items: torch.Tensor) -> torch.Tensor:
        """items [B,n] -> [B,d], the hidden state at the last (most recent) position."""
        return self.forward(items)[:, -1]


class SASRec(SequenceEncoderBase):
    def __init__(self, cfg: SASRecConfig, num_items: int) -> None:
        super().__init__()
        self.cfg, self.num_items, self.dim, self.max_len = cfg, num_items, cfg.dim, cfg.max_len
        self.item_emb = ItemEmbedding(num_items + 1, cfg.dim, cfg.embedding_backend)
        self.pos_emb = nn.Parameter(torch.empty(cfg.max_len, cfg.dim))
        self.emb_drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            CausalSelfAttentionBlock(cfg.dim, cfg.num_heads, cfg.dropout, norm=cfg.norm, eps=cfg.ln_eps)
            for _ in range(cfg.num_blocks))
        self.final_norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg: SASRecConfig, num_items: int, num_categories: int = 0) -> "SASRec":
        return cls(cfg, num_items)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.xavier_normal_(p)
        self.item_emb.weight[0].zero_()

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items [B,n] left-padded item ids -> hidden [B,n,d] (padded positions zero)."""
        self._check_items(items)
        items, start = self.trim(items)  # [B,n'] n' = n - start
        x, valid = self.embed(items)  # [B,n',d], [B,n']
        mask = causal_padding_mask(valid)  # [B,1,n',n']
        for blk in self.blocks:
            x = blk(x, valid, mask=mask)
        h = self.final_norm(x) * valid[..., None].to(x.dtype)  # [B,n',d]
        return F.pad(h, (0, 0, start, 0))  # [B,n,d]

    def training_loss(self, batch: dict[str, torch.Tensor], loss_cfg: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
        hidden = self.forward(batch["items"])
        table = self.item_embeddings()
        rec = next_item_loss(hidden, table, batch, loss_cfg)
        loss = rec
        logs = {"rec_loss": float(rec.detach())}
        if self.cfg.l2_emb > 0:
            l2 = self.cfg.l2_emb * table.pow(2).sum()
            loss = loss + l2
            logs["l2_loss"] = float(l2.detach())
        return loss, logs
