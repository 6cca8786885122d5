"""DARE (Feng et al., ICLR 2025): TWIN's two stages with DECOUPLED embeddings.

Two tables: attention embeddings E_att (item/category/position dims configurable, may be smaller
than the representation dims: the search costs O(d_att·L)) used only for the search and the
softmax weights, and representation embeddings E_repr used only for aggregation and the target
representation. Scores s_i = q_sem·k_sem/√d_sem + q_time·k_time/√d_time (scalings folded into the
query), top-K = 20, softmax over the K, u = Σ w_i e_i^repr; head on [v_t, u, v_t ⊙ u] -> BN -> 200
-> PReLU -> 80 -> PReLU -> 1 with BCE on the logit (== the code's 2-class CE); optional auxiliary
full-attention loss (weight 1, head BN -> 200 -> PReLU -> 1). Init: N(0, 0.01²) for embeddings and
Linear weights, zero biases (BatchNorm/PReLU keep PyTorch defaults; see ctr_common.init_normal_).
So the attention path's gradient reaches only E_att and the representation path's only E_repr.
"""

from __future__ import annotations

from typing import Literal

from recsys.config import StrictModel
from recsys.models.ctr_common import BehaviourEmbedding
from recsys.models.twin import TwoStageCTR


class DAREConfig(StrictModel):
    name: Literal["dare"] = "dare"
    item_dim: int = 16  # representation table dims
    cat_dim: int = 16
    pos_dim: int = 16
    attention_item_dim: int | None = None  # attention table dims; None = same as representation
    attention_cat_dim: int | None = None
    attention_pos_dim: int | None = None
    max_position: int = 2000
    top_k: int = 20
    use_aux_loss: bool = False
    head_hidden: list[int] = [200, 80]
    aux_hidden: list[int] = [200]
    init_std: float = 0.01


class DARE(TwoStageCTR):
    def __init__(self, cfg: DAREConfig, num_items: int, num_categories: int) -> None:
        def pick(v: int | None, default: int) -> int:
            return default if v is None else v

        att = BehaviourEmbedding(
            num_items, num_categories, pick(cfg.attention_item_dim, cfg.item_dim),
            pick(cfg.attention_cat_dim, cfg.cat_dim), pick(cfg.attention_pos_dim, cfg.pos_dim), cfg.max_position,
        )
        rep = BehaviourEmbedding(num_items, num_categories, cfg.item_dim, cfg.cat_dim, cfg.pos_dim, cfg.max_position)
        super().__init__(att, rep, cfg.top_k, "soft", cfg.use_aux_loss, cfg.head_hidden, cfg.aux_hidden, cfg.init_std)
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: DAREConfig, num_items: int, num_categories: int = 0) -> "DARE":
        return cls(cfg, num_items, num_categories)
