"""DIN (Zhou et al., KDD 2018) as DARE's code runs it: target attention over the most recent N
behaviours with DIN's learnable attention MLP on [q, k, q-k, q*k] (`attn_func=learnable`),
features [v_t, u, v_t ⊙ u] -> BN -> 200 -> PReLU -> 80 -> PReLU -> 1.

`attention: dot` swaps the MLP score for scaled dot-product <v_t, h_j> / sqrt(E) (the "full target
attention" SDIM's paper compares against when `max_recent: null`, i.e. over the whole history).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from attention.target import DINScore, masked_softmax_attend
from recsys.config import StrictModel
from recsys.models.ctr_common import (
    BehaviourEmbedding,
    CTRHead,
    CTRModel,
    append_history,
    init_normal_,
    recent_window,
    single_user_batch,
)


class DINConfig(StrictModel):
    name: Literal["din"] = "din"
    item_dim: int = 16
    cat_dim: int = 16
    pos_dim: int = 16
    max_position: int = 2000
    max_recent: int | None = 50  # N: attention over the most recent N behaviours (None: whole history)
    attention: Literal["mlp", "dot"] = "mlp"  # DIN's learnable MLP score or scaled dot product
    attention_hidden: int = 36
    head_hidden: list[int] = [200, 80]
    init_std: float = 0.01


class DIN(CTRModel):
    def __init__(self, cfg: DINConfig, num_items: int, num_categories: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.emb = BehaviourEmbedding(num_items, num_categories, cfg.item_dim, cfg.cat_dim, cfg.pos_dim, cfg.max_position)
        e = self.emb.dim
        self.score = DINScore(e, cfg.attention_hidden) if cfg.attention == "mlp" else None
        self.scale = 1.0 / math.sqrt(e)
        self.head = CTRHead(3 * e, cfg.head_hidden)
        init_normal_(self, cfg.init_std)

    @classmethod
    def from_config(cls, cfg: DINConfig, num_items: int, num_categories: int = 0) -> "DIN":
        return cls(cfg, num_items, num_categories)

    def _window(self, items, cats, lengths):
        """Right-padded [B,L] -> the attended behaviours: the most recent N, or all when N is None."""
        if self.cfg.max_recent is None:
            if items.shape[1] == 0:  # keep one (masked) slot so the softmax has a dimension to reduce
                return items.new_zeros(items.shape[0], 1), cats.new_zeros(cats.shape[0], 1), lengths
            return items, cats, lengths
        return recent_window(items, cats, lengths, self.cfg.max_recent)

    def _logits(self, batch, with_aux):
        items, cats, lengths = self._window(batch["hist_items"], batch["hist_cats"], batch["hist_lengths"])  # [B,N]
        h = self.emb.history(items, cats, lengths)  # [B,N,E]
        vt = self.emb.target(batch["target_items"], batch["target_cats"])  # [B,E]
        if self.score is None:  # dot product
            scores = torch.matmul(vt[:, None, :] * self.scale, h.transpose(1, 2))  # [B,1,N]
        else:
            scores = self.score(vt[:, None, :], h)  # [B,1,N]
        u = masked_softmax_attend(scores, h, lengths)[:, 0]  # [B,E]
        return self.head(torch.cat([vt, u, vt * u], dim=-1)), None

    # serving split: the state is the recent window of ids (DIN has nothing cheaper to cache)
    def encode_user(self, hist_items: torch.Tensor, hist_cats: torch.Tensor | None) -> dict[str, torch.Tensor]:
        items, cats = self._ids(hist_items, hist_cats)
        n = self.cfg.max_recent
        if n is None:
            return {"items": items.clone(), "cats": cats.clone()}
        return {"items": items[-n:].clone(), "cats": cats[-n:].clone()}

    def append_to_state(self, state, items, cats, max_history: int):
        items, cats = self._ids(items, cats)
        new_i, new_c, _ = append_history(state["items"], state["cats"], items, cats, min(max_history, self.cfg.max_recent or max_history))
        return {"items": new_i, "cats": new_c}

    def score_candidates(self, state, cand_items, cand_cats):
        ci, cc = self._ids(cand_items, cand_cats)
        return self._logits(single_user_batch(state["items"], state["cats"], ci, cc), with_aux=False)[0]
