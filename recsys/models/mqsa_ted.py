"""MQSA-TED (Zhu et al., WSDM 2024), docs/MODELS.md (the official code's formulation).

Shared input X⁰ = Dropout(√d·Ē[s] + P) × mask feeds two stacks with their own parameters:
- short query: SASRec blocks (query = the item itself) -> h^S = LN(X)
- long query: the same blocks with the query replaced by the causal window mean of the last L
  items of the block's input (attention/multi_query.py) -> h^L = LN(X)
forward returns α·h^S + (1-α)·h^L; since logits are linear in h this equals the paper's
logit-level mixing α·h^S Ē^T + (1-α)·h^L Ē^T.

TED (recsys/models/transitions.py): KD from the training transition graph into the input item
table: student q_i = softmax((√d·Dropout(E[i]))·E^T/τ) over items 1..N, teacher p_i from the
graph, loss = mean over every non-pad item occurrence of the batch's `items` (duplicates kept) of
-Σ p log q, weight λ_kd. Call `attach_teacher(graph)` before training (it computes the teacher
rows for τ once; the per-step cost is the [R, N] student softmax, see transitions.py).

l2_reg: as in the official code, added to the loss as l2_reg·Σ_θ ||θ||²/2 over ALL trainable
parameters (Adam + L2 term, not AdamW's decoupled decay); the trainer should use weight_decay 0.
Init: item table and positions N(0, 0.01²) as the official code, row 0 (padding) zero; dense
layers xavier-normal.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from attention.causal import CausalSelfAttentionBlock, Dropout, causal_padding_mask
from attention.multi_query import MultiQueryBlock
from recsys.config import StrictModel
from recsys.losses import LossConfig, apply_reduction, next_item_loss
from recsys.models.item_embedding import ItemEmbedding
from recsys.models.sasrec import SequenceEncoderBase
from recsys.models.transitions import TeacherWeights, TransitionGraph, teacher_weights, ted_kd_loss


class MQSATEDConfig(StrictModel):
    name: Literal["mqsa_ted"] = "mqsa_ted"
    dim: int = Field(64, ge=1)  # num_factor
    num_blocks: int = Field(1, ge=1)
    num_heads: int = Field(1, ge=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    max_len: int = Field(50, ge=1)
    window: int = Field(3, ge=1)  # L of the L-query
    alpha: float = Field(0.5, ge=0.0, le=1.0)  # weight of the short-query branch
    lambda_kd: float = Field(0.1, ge=0.0)
    tau: float = Field(0.1, gt=0.0)
    time_span: int = Field(1, ge=1)  # transitions counted up to this many steps ahead
    l2_reg: float = Field(1e-4, ge=0.0)  # loss term l2_reg·Σ||θ||²/2 over all parameters
    norm: Literal["query_only", "pre_ln"] = "query_only"
    ln_eps: float = 1e-8
    embedding_backend: Literal["torch", "torchrec"] = "torchrec"  # see recsys/models/item_embedding.py
    trim_padding: bool = True  # exact speed-up, see recsys/models/sasrec.py


class MQSATED(SequenceEncoderBase):
    def __init__(self, cfg: MQSATEDConfig, num_items: int) -> None:
        super().__init__()
        self.cfg, self.num_items, self.dim, self.max_len = cfg, num_items, cfg.dim, cfg.max_len
        self.item_emb = ItemEmbedding(num_items + 1, cfg.dim, cfg.embedding_backend)
        self.pos_emb = nn.Parameter(torch.empty(cfg.max_len, cfg.dim))
        self.emb_drop = Dropout(cfg.dropout)
        self.kd_drop = Dropout(cfg.dropout)
        self.short_blocks = nn.ModuleList(
            CausalSelfAttentionBlock(cfg.dim, cfg.num_heads, cfg.dropout, norm=cfg.norm, eps=cfg.ln_eps)
            for _ in range(cfg.num_blocks))
        self.long_blocks = nn.ModuleList(
            MultiQueryBlock(cfg.dim, cfg.num_heads, cfg.dropout, cfg.window, norm=cfg.norm, eps=cfg.ln_eps)
            for _ in range(cfg.num_blocks))
        self.short_norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.long_norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.teacher: TransitionGraph | None = None
        self.teacher_w: TeacherWeights | None = None  # the teacher's rows for cfg.tau, computed once
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg: MQSATEDConfig, num_items: int, num_categories: int = 0) -> "MQSATED":
        return cls(cfg, num_items)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.xavier_normal_(p)
        nn.init.normal_(self.item_emb.weight, std=0.01)
        nn.init.normal_(self.pos_emb, std=0.01)
        self.item_emb.weight[0].zero_()

    def attach_teacher(self, graph: TransitionGraph) -> None:
        if graph.num_items != self.num_items:
            raise ValueError(f"transition graph has {graph.num_items} items, model {self.num_items}")
        self.teacher = graph
        self.teacher_w = teacher_weights(graph, self.cfg.tau)

    def branches(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """items [B,n] -> (h^S [B,n,d], h^L [B,n,d]), padded positions zero."""
        self._check_items(items)
        items, start = self.trim(items)  # exact, see recsys/models/sasrec.py
        x0, valid = self.embed(items)
        mask = causal_padding_mask(valid)  # [B,1,n,n]
        keep = valid[..., None].to(x0.dtype)
        xs = xl = x0
        for blk in self.short_blocks:
            xs = blk(xs, valid, mask=mask)
        for blk in self.long_blocks:
            xl = blk(xl, valid, mask=mask)
        hs, hl = self.short_norm(xs) * keep, self.long_norm(xl) * keep  # [B,n',d]
        return F.pad(hs, (0, 0, start, 0)), F.pad(hl, (0, 0, start, 0))

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items [B,n] -> α·h^S + (1-α)·h^L [B,n,d]."""
        hs, hl = self.branches(items)
        return self.cfg.alpha * hs + (1.0 - self.cfg.alpha) * hl

    def kd_loss(self, items: torch.Tensor) -> torch.Tensor:
        """TED loss over the non-pad item occurrences of items [B,n]."""
        if self.teacher is None or self.teacher_w is None:
            raise RuntimeError("MQSA-TED needs attach_teacher(TransitionGraph) before training with lambda_kd > 0")
        if self.teacher_w.tau != self.cfg.tau:  # cfg.tau changed after attach_teacher
            self.teacher_w = teacher_weights(self.teacher, self.cfg.tau)
        occurrences = items[items != 0]  # [R]
        table = self.item_embeddings()[1:]  # [N,d] no padding row
        student = math.sqrt(self.dim) * self.kd_drop(table[occurrences - 1])  # [R,d]
        if self.teacher_w.w.device != items.device:
            self.teacher_w = self.teacher_w.to(items.device)
            self.teacher = self.teacher_w.graph
        return ted_kd_loss(self.teacher, occurrences, student, table, self.cfg.tau, weights=self.teacher_w)

    def training_loss(self, batch: dict[str, torch.Tensor], loss_cfg: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
        items = batch["items"]
        hidden = self.forward(items)
        rec = next_item_loss(hidden, self.item_embeddings(), batch, loss_cfg)
        loss = rec
        logs = {"rec_loss": float(rec.detach())}
        if self.cfg.lambda_kd > 0:
            kd = apply_reduction(self.kd_loss(items), batch, loss_cfg)  # a mean over the same positions
            loss = loss + self.cfg.lambda_kd * kd
            logs["kd_loss"] = float(kd.detach())
        if self.cfg.l2_reg > 0:
            l2 = 0.5 * self.cfg.l2_reg * sum(p.pow(2).sum() for p in self.parameters() if p.requires_grad)
            loss = loss + l2
            logs["l2_loss"] = float(l2.detach())
        return loss, logs
