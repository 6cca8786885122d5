"""Two-stage retrieval ops (TWIN/DARE): top-k target search and softmax aggregation over the k.

Plain PyTorch: the CPU path and the oracle for the Triton kernels.
Tie rule: among equal scores the smaller (older) history index wins, via a stable descending sort.
"""

from __future__ import annotations

import torch


def topk_target_search(
    queries: torch.Tensor, keys: torch.Tensor, lengths: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k history positions per candidate by dot product.

    queries [B,C,da] (callers pre-scale), keys [B,L,da], lengths [B] ->
    (scores [B,C,k] float32, indices [B,C,k] int64). Positions >= length are never selected; when
    fewer than k positions are valid (including k > L) the trailing slots hold index -1, score -inf.
    No gradient.
    """
    if queries.dim() != 3 or keys.dim() != 3:
        raise ValueError(f"queries must be [B,C,da] and keys [B,L,da]; got {tuple(queries.shape)}, {tuple(keys.shape)}")
    b, c, da = queries.shape
    l = keys.shape[1]
    if keys.shape[0] != b or keys.shape[2] != da:
        raise ValueError(f"keys {tuple(keys.shape)} do not match queries {tuple(queries.shape)}")
    if lengths.shape != (b,):
        raise ValueError(f"lengths must be [B={b}], got {tuple(lengths.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    with torch.no_grad():
        out_s = torch.full((b, c, k), float("-inf"), dtype=torch.float32, device=queries.device)
        out_i = torch.full((b, c, k), -1, dtype=torch.int64, device=queries.device)
        if l == 0 or c == 0:
            return out_s, out_i
        scores = torch.matmul(queries.float(), keys.float().transpose(1, 2))  # [B,C,L]
        valid = torch.arange(l, device=queries.device)[None, :] < lengths[:, None]  # [B,L]
        scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
        sorted_s, sorted_i = torch.sort(scores, dim=-1, descending=True, stable=True)
        kk = min(k, l)
        top_s, top_i = sorted_s[..., :kk], sorted_i[..., :kk]  # [B,C,kk]
        top_valid = valid[:, None, :].expand(b, c, l).gather(2, top_i)
        out_s[..., :kk] = torch.where(top_valid, top_s, torch.full_like(top_s, float("-inf")))
        out_i[..., :kk] = torch.where(top_valid, top_i, torch.full_like(top_i, -1))
        return out_s, out_i


def topk_aggregate(scores: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Softmax over the valid slots (index >= 0) and weighted sum of `values[b, indices]`.

    scores [B,C,k], indices [B,C,k] (int64, -1 = empty slot), values [B,L,dr] -> [B,C,dr];
    zero where a candidate has no valid slot. Differentiable w.r.t. scores and values; empty slots
    get zero gradient whatever their score (e.g. -inf).
    """
    if scores.shape != indices.shape or scores.dim() != 3:
        raise ValueError(f"scores and indices must both be [B,C,k]; got {tuple(scores.shape)}, {tuple(indices.shape)}")
    if values.dim() != 3 or values.shape[0] != scores.shape[0]:
        raise ValueError(f"values must be [B,L,dr] with the same B; got {tuple(values.shape)}")
    b, c, k = scores.shape
    l, dr = values.shape[1], values.shape[2]
    valid = indices >= 0  # [B,C,k]
    if l == 0:
        if bool(valid.any()):
            raise ValueError("indices point into an empty history")
        return values.new_zeros(b, c, dr)
    s = scores.masked_fill(~valid, 0.0)  # finite everywhere (keeps gradients NaN-free)
    m = s.masked_fill(~valid, float("-inf")).amax(dim=-1, keepdim=True)  # [B,C,1]
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    e = torch.exp(s - m) * valid.to(s.dtype)  # [B,C,k]
    w = e / e.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)  # [B,C,k]
    idx = indices.clamp_min(0).reshape(b, c * k, 1).expand(b, c * k, dr)
    picked = values.gather(1, idx).reshape(b, c, k, dr)  # [B,C,k,dr]
    return torch.einsum("bck,bckd->bcd", w.to(values.dtype), picked)
