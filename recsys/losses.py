"""Next-item losses on the hidden states of a sequence model (docs/MODELS.md, SASRec and MQSA-TED).

All three score with the shared item table (r = <h_t, E_i>), are averaged over the valid
positions (pos != 0) and never score the padding row 0:
- "bce": the SASRec paper's loss with sampled negatives per position (batch["neg"] [B,n,K]):
  mean over valid positions of -log σ(pos) plus the mean over that position's K negatives of
  -log σ(-neg) (for K=1 exactly the paper's -log σ(pos) - log σ(-neg); equal to pmixer's two
  separate BCE means). Negative id 0 is treated as "no negative".
- "ce": full softmax cross-entropy over all N items (pad column excluded).
- "sampled_softmax": softmax over [positive, M shared negatives] (batch["shared_neg"] [M]);
  with logq_correction the negatives' logits get -log(M·Q(j)) (batch["shared_neg_logq"] = log Q(j),
  the sampling probability), which makes Σ_neg exp(logit) an unbiased estimate of the full
  softmax's denominator; a negative equal to the position's positive ("accidental hit") or to
  padding is masked out.

Reduction (LossConfig.reduction): "batch_mean" (default, the papers' code) averages over the
batch's valid positions, so every batch weighs the same whatever its number of positions;
"epoch_mean" multiplies that mean by batch["loss_scale"] = V_batch / (nominal batch size x mean
valid positions per train row), i.e. the batch's sum over positions divided by a constant, so every
training position weighs the same across the epoch however the batches are formed. With randomly
mixed batches the two are close (each batch has about the mean number of positions); with
length-bucketed batches (NextItemTask) "batch_mean" up-weights the positions of short users (a
batch of 128 three-item users has ~2 positions per user, a batch of long users 50) and
"epoch_mean" restores the random-batch objective. `apply_reduction` is the one place that scales,
for this loss and for per-position auxiliary losses (MQSA-TED's KD). The logged train/loss is the
scaled value, so it is not comparable across the two reductions.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from recsys.config import StrictModel

Batch = dict[str, torch.Tensor]


class LossConfig(StrictModel):
    kind: Literal["bce", "ce", "sampled_softmax"] = "bce"
    #: negatives the task samples: per position for "bce" (batch["neg"] [B,n,K]), shared per batch
    #: for "sampled_softmax" (batch["shared_neg"] [M]); unused by "ce"
    num_negatives: int = Field(1, ge=1)
    logq_correction: bool = True
    #: "sampled_softmax" only: where the shared negatives come from. "popularity" (train-item
    #: frequencies, with log-Q correction an estimate of the full softmax: the full-ranking objective)
    #: or "uniform" over all items (the distribution of the sampled-100 protocol's negatives)
    shared_negatives: Literal["popularity", "uniform"] = "popularity"
    #: "batch_mean" or "epoch_mean" (every position weighs the same across the epoch), module doc
    reduction: Literal["batch_mean", "epoch_mean"] = "batch_mean"


def _require(batch: Batch, key: str, kind: str) -> torch.Tensor:
    if key not in batch:
        raise KeyError(f"loss kind {kind!r} needs batch[{key!r}] (batch has {sorted(batch)})")
    return batch[key]


def bce_loss(hidden: torch.Tensor, item_table: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """hidden [B,n,d], item_table [N+1,d], pos [B,n], neg [B,n,K] -> scalar."""
    if neg.dim() == 2:
        neg = neg[..., None]
    valid = pos != 0  # [B,n]
    h = hidden[valid]  # [V,d]
    pos_logit = (h * item_table[pos[valid]]).sum(-1)  # [V]
    neg_ids = neg[valid]  # [V,K]
    neg_logit = torch.einsum("vd,vkd->vk", h, item_table[neg_ids])  # [V,K]
    neg_ok = (neg_ids != 0).to(h.dtype)
    neg_term = (-F.logsigmoid(-neg_logit) * neg_ok).sum(-1) / neg_ok.sum(-1).clamp_min(1.0)  # [V]
    return (-F.logsigmoid(pos_logit) + neg_term).mean()


def ce_loss(hidden: torch.Tensor, item_table: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Full softmax over items 1..N at every valid position."""
    valid = pos != 0
    logits = hidden[valid] @ item_table[1:].T  # [V,N]
    return F.cross_entropy(logits, pos[valid] - 1)


def sampled_softmax_loss(hidden: torch.Tensor, item_table: torch.Tensor, pos: torch.Tensor,
                         shared_neg: torch.Tensor, shared_neg_logq: torch.Tensor | None) -> torch.Tensor:
    """Softmax over [positive, shared negatives] per valid position, optional log-Q correction."""
    valid = pos != 0
    h = hidden[valid]  # [V,d]
    p = pos[valid]  # [V]
    pos_logit = (h * item_table[p]).sum(-1, keepdim=True)  # [V,1]
    neg_logit = h @ item_table[shared_neg].T  # [V,M]
    if shared_neg_logq is not None:
        neg_logit = neg_logit - (shared_neg_logq.to(h.dtype) + math.log(shared_neg.numel()))[None, :]
    hit = (shared_neg[None, :] == p[:, None]) | (shared_neg[None, :] == 0)  # [V,M]
    neg_logit = neg_logit.masked_fill(hit, float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=1)  # [V,1+M]
    return -torch.log_softmax(logits, dim=1)[:, 0].mean()


def next_item_loss(hidden: torch.Tensor, item_table: torch.Tensor, batch: Batch, cfg: LossConfig) -> torch.Tensor:
    """hidden [B,n,d], item_table [N+1,d] (row 0 = padding), batch with "pos" [B,n] -> scalar."""
    pos = _require(batch, "pos", cfg.kind)
    if pos.shape != hidden.shape[:2]:
        raise ValueError(f"batch['pos'] shape {tuple(pos.shape)} does not match hidden {tuple(hidden.shape[:2])}")
    if not bool((pos != 0).any()):
        raise ValueError("batch['pos'] has no valid position (all 0)")
    if cfg.kind == "bce":
        loss = bce_loss(hidden, item_table, pos, _require(batch, "neg", cfg.kind))
    elif cfg.kind == "ce":
        loss = ce_loss(hidden, item_table, pos)
    else:
        shared = _require(batch, "shared_neg", cfg.kind)
        logq = _require(batch, "shared_neg_logq", cfg.kind) if cfg.logq_correction else None
        loss = sampled_softmax_loss(hidden, item_table, pos, shared, logq)
    return apply_reduction(loss, batch, cfg)


def apply_reduction(loss: torch.Tensor, batch: Batch, cfg: LossConfig) -> torch.Tensor:
    """A mean over the batch's valid positions -> the configured reduction (module doc)."""
    if cfg.reduction == "epoch_mean":
        return loss * _require(batch, "loss_scale", f"{cfg.kind} with reduction 'epoch_mean'").to(loss.dtype)
    return loss
