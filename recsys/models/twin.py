"""TWIN (Chang et al., KDD 2023) as in DARE's code: two stages with ONE shared embedding table.

Stage 1 searches the top-K of the whole history by target attention
s_i = q_sem·k_sem/√d_sem + q_time·k_time/√d_time (both scalings folded into the query, so the
search op is a single dot product); stage 2 is a softmax over the K with the scores recomputed
differentiably, aggregating the (same-table) behaviour embeddings. `search: hard` is TWIN-hard:
the K most recent same-category behaviours, shortfall filled with the most recent others.
Head: [v_t, u, v_t ⊙ u] -> BN -> 200 -> PReLU -> 80 -> PReLU -> 1; optional auxiliary loss from
full (non-top-K) attention through BN -> 200 -> PReLU -> 1.

`TwoStageCTR` is shared with DARE, which only swaps in a second (attention) table.
`retrieval_indices(batch, k)` exposes stage 1 alone (the searched history slots), which
pipelines/report.py scores against a planted build's relevant positions.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from attention.target import full_target_attention, hard_search_indices, two_stage_attention
from recsys.config import StrictModel
from recsys.models.ctr_common import (
    BehaviourEmbedding,
    CTRHead,
    CTRModel,
    _ops,
    append_history,
    check_ctr_batch,
    init_normal_,
    relative_positions,
)


class TWINConfig(StrictModel):
    name: Literal["twin"] = "twin"
    item_dim: int = 16
    cat_dim: int = 16
    pos_dim: int = 16
    max_position: int = 2000
    top_k: int = 20
    search: Literal["soft", "hard"] = "soft"
    use_aux_loss: bool = False
    head_hidden: list[int] = [200, 80]
    aux_hidden: list[int] = [200]
    init_std: float = 0.01


class TwoStageCTR(CTRModel):
    """Search (top-k by attention embeddings) + aggregate (representation embeddings)."""

    def __init__(self, att: BehaviourEmbedding, rep: BehaviourEmbedding, top_k: int, search: str,
                 use_aux_loss: bool, head_hidden: list[int], aux_hidden: list[int], init_std: float) -> None:
        super().__init__()
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.att_emb = att  # attention table (TWIN: the one shared table)
        # DARE's separate representation table; None for TWIN (registered once, so the saved
        # weights hold no aliased tensors)
        self.rep_table = rep if rep is not att else None
        self.top_k, self.search, self.use_aux_loss = top_k, search, use_aux_loss
        dr = rep.dim
        self.head = CTRHead(3 * dr, head_hidden)
        self.aux_head = CTRHead(3 * dr, aux_hidden) if use_aux_loss else None
        init_normal_(self, init_std)

    @property
    def shared(self) -> bool:
        return self.rep_table is None

    @property
    def rep_emb(self) -> BehaviourEmbedding:
        return self.att_emb if self.rep_table is None else self.rep_table

    # --- pieces -------------------------------------------------------------------------------
    def _query_scale(self) -> torch.Tensor:
        """[da] factors 1/√d_sem on the semantic slice and 1/√d_time on the time slice."""
        a = self.att_emb
        parts = [torch.full((a.sem_dim,), 1.0 / math.sqrt(a.sem_dim))]
        if a.pos_dim:
            parts.append(torch.full((a.pos_dim,), 1.0 / math.sqrt(a.pos_dim)))
        return torch.cat(parts).to(a.item.weight.device)

    def _query(self, items: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
        return self.att_emb.target(items, cats) * self._query_scale()

    def _features(self, vt: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return torch.cat([vt, u, vt * u], dim=-1)

    def _search(self, q, keys, lengths, hist_cats, target_cats, k: int) -> torch.Tensor:
        """Stage 1: q [B,C,da] (pre-scaled), keys [B,L,da], lengths [B], hist_cats [B,L],
        target_cats [B,C] -> indices [B,C,k] best first (-1 = empty slot). No gradient."""
        if self.search == "hard":
            if self.att_emb.cat is None:  # no category field: hard search = the K most recent
                hist_cats, target_cats = torch.zeros_like(hist_cats), torch.zeros_like(target_cats)
            return hard_search_indices(hist_cats, lengths, target_cats, k)
        return _ops().topk_target_search(q.detach(), keys.detach(), lengths, k)[1]

    def _paths(self, q, keys, values, lengths, hist_cats, target_cats):
        """q [B,C,da], keys [B,L,da], values [B,L,dr] -> dict(u, indices)."""
        indices = self._search(q, keys, lengths, hist_cats, target_cats, self.top_k)
        u, indices = two_stage_attention(q, keys, values, lengths, self.top_k, indices)
        return {"u": u, "indices": indices}

    @torch.no_grad()
    def retrieval_indices(self, batch: dict[str, torch.Tensor], k: int | None = None) -> torch.Tensor:
        """The search stage alone: the `k` history slots (of the right-padded `hist_items`, so slot j
        is position `prefix_length - hist_lengths + j` of the full sequence) that stage 1 ranks
        highest for each row's target, best first, -1 where fewer than k are valid -> LongTensor [B,k].
        `k` defaults to `top_k` (exactly the slots stage 2 aggregates); a larger k ranks the same
        search deeper (pipelines/report.py's retrieval NDCG@k against planted truth)."""
        k = self.top_k if k is None else int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        check_ctr_batch(batch)
        items, cats, lengths = batch["hist_items"], batch["hist_cats"], batch["hist_lengths"]
        keys = self.att_emb.history(items, cats, lengths)  # [B,L,da]
        q = self._query(batch["target_items"], batch["target_cats"])[:, None, :]  # [B,1,da]
        return self._search(q, keys, lengths, cats, batch["target_cats"][:, None], k)[:, 0]  # [B,k]

    def paths(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The two paths of a batch, for analysis and tests: q [B,1,da], keys [B,L,da],
        values [B,L,dr], vt [B,dr], indices [B,1,k], scores [B,1,k] (recomputed, differentiable;
        only slots with index >= 0 are meaningful), u [B,1,dr]."""
        items, cats, lengths = batch["hist_items"], batch["hist_cats"], batch["hist_lengths"]
        keys = self.att_emb.history(items, cats, lengths)  # [B,L,da]
        values = keys if self.shared else self.rep_emb.history(items, cats, lengths)  # [B,L,dr]
        q = self._query(batch["target_items"], batch["target_cats"])[:, None, :]  # [B,1,da]
        vt = self.rep_emb.target(batch["target_items"], batch["target_cats"])  # [B,dr]
        out = self._paths(q, keys, values, lengths, cats, batch["target_cats"][:, None])
        idx = out["indices"]
        b, c, k = idx.shape
        picked = keys.gather(1, idx.clamp_min(0).reshape(b, c * k, 1).expand(b, c * k, keys.shape[-1]))
        scores = (q[:, :, None, :] * picked.reshape(b, c, k, -1)).sum(-1)  # [B,1,k]
        return {"q": q, "keys": keys, "values": values, "vt": vt, "scores": scores, **out}

    def _logits(self, batch, with_aux):
        items, cats, lengths = batch["hist_items"], batch["hist_cats"], batch["hist_lengths"]
        keys = self.att_emb.history(items, cats, lengths)  # [B,L,da]
        values = keys if self.shared else self.rep_emb.history(items, cats, lengths)  # [B,L,dr]
        q = self._query(batch["target_items"], batch["target_cats"])[:, None, :]  # [B,1,da]
        vt = self.rep_emb.target(batch["target_items"], batch["target_cats"])  # [B,dr]
        u = self._paths(q, keys, values, lengths, cats, batch["target_cats"][:, None])["u"][:, 0]  # [B,dr]
        logits = self.head(self._features(vt, u))
        aux = None
        if with_aux and self.aux_head is not None:
            u_full = full_target_attention(q, keys, values, lengths)[:, 0]  # [B,dr]
            aux = self.aux_head(self._features(vt, u_full))
        return logits, aux

    # --- serving split --------------------------------------------------------------------------
    # State: ids plus the position-free (semantic) attention keys and representation values per
    # behaviour; the target-relative position part is looked up at scoring time (it shifts as the
    # history grows), so appending is a concatenation.
    def encode_user(self, hist_items: torch.Tensor, hist_cats: torch.Tensor | None) -> dict[str, torch.Tensor]:
        items, cats = self._ids(hist_items, hist_cats)
        state = {"items": items.clone(), "cats": cats.clone()}
        state["att_sem"] = self.att_emb.semantic(items, cats)  # [L,ds_a]
        state["rep_sem"] = state["att_sem"] if self.shared else self.rep_emb.semantic(items, cats)  # [L,ds_r]
        return state

    def append_to_state(self, state, items, cats, max_history: int):
        items, cats = self._ids(items, cats)
        new_i, new_c, ev = append_history(state["items"], state["cats"], items, cats, max_history)
        att = torch.cat([state["att_sem"], self.att_emb.semantic(items, cats)])[ev:]
        rep = att if self.shared else torch.cat([state["rep_sem"], self.rep_emb.semantic(items, cats)])[ev:]
        return {"items": new_i, "cats": new_c, "att_sem": att, "rep_sem": rep}

    def score_candidates(self, state, cand_items, cand_cats):
        ci, cc = self._ids(cand_items, cand_cats)
        l = state["items"].shape[0]
        lengths = torch.tensor([l], device=ci.device)
        pos = relative_positions(lengths, l, self.att_emb.max_position)[0]  # [L]
        keys = torch.cat([state["att_sem"], self.att_emb.time(pos)], dim=-1)[None]  # [1,L,da]
        values = keys if self.shared else torch.cat([state["rep_sem"], self.rep_emb.time(pos)], dim=-1)[None]
        q = self._query(ci, cc)[None]  # [1,C,da]
        vt = self.rep_emb.target(ci, cc)  # [C,dr]
        u = self._paths(q, keys, values, lengths, state["cats"][None], cc[None])["u"][0]  # [C,dr]
        return self.head(self._features(vt, u))

    def score_candidates_batch(self, states, cand_items, cand_cats):
        """`score_candidates` for several users in one call (serving groups concurrent requests):
        histories and candidates right-padded (padding masked by the lengths); one [C_b] logit
        tensor per user, equal to that user's own `score_candidates`."""
        ids = [self._ids(i, c) for i, c in zip(cand_items, cand_cats)]
        pad = torch.nn.utils.rnn.pad_sequence
        ci, cc = pad([i for i, _ in ids], batch_first=True), pad([c for _, c in ids], batch_first=True)  # [B,C]
        lengths = torch.tensor([s["items"].shape[0] for s in states], device=ci.device)
        width = int(lengths.max()) if len(states) else 0
        pos = relative_positions(lengths, width, self.att_emb.max_position)  # [B,L]
        keys = torch.cat([pad([s["att_sem"] for s in states], batch_first=True), self.att_emb.time(pos)], dim=-1)
        values = keys if self.shared else torch.cat(
            [pad([s["rep_sem"] for s in states], batch_first=True), self.rep_emb.time(pos)], dim=-1)
        hist_cats = pad([s["cats"] for s in states], batch_first=True)  # [B,L]
        u = self._paths(self._query(ci, cc), keys, values, lengths, hist_cats, cc)["u"]  # [B,C,dr]
        x = self._features(self.rep_emb.target(ci, cc), u)  # [B,C,F]
        logits = self.head(x.reshape(-1, x.shape[-1])).reshape(x.shape[:2])  # the head (batch norm) takes [N,F]
        return [logits[b, : i.shape[0]] for b, (i, _) in enumerate(ids)]


class TWIN(TwoStageCTR):
    def __init__(self, cfg: TWINConfig, num_items: int, num_categories: int) -> None:
        emb = BehaviourEmbedding(num_items, num_categories, cfg.item_dim, cfg.cat_dim, cfg.pos_dim, cfg.max_position)
        super().__init__(emb, emb, cfg.top_k, cfg.search, cfg.use_aux_loss, cfg.head_hidden, cfg.aux_hidden, cfg.init_std)
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: TWINConfig, num_items: int, num_categories: int = 0) -> "TWIN":
        return cls(cfg, num_items, num_categories)
