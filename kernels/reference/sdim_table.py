"""SDIM bucket table (BSE) and candidate gather, plain PyTorch: CPU path and Triton oracle."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _valid_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] lengths -> [B, L] bool, True at positions < length."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def sdim_bucket_table(
    history: torch.Tensor, codes: torch.Tensor, lengths: torch.Tensor, num_buckets: int
) -> torch.Tensor:
    """Per user, signature and bucket, the sum of the history embeddings hashed there.

    history [B,L,d], codes [B,L,S] (int, in [0, num_buckets)), lengths [B] -> [B,S,num_buckets,d].
    Positions >= length are ignored. Differentiable w.r.t. history (scatter-add, so the backward is a gather).
    """
    if history.dim() != 3 or codes.dim() != 3:
        raise ValueError(f"history must be [B,L,d] and codes [B,L,S]; got {tuple(history.shape)}, {tuple(codes.shape)}")
    b, l, d = history.shape
    if codes.shape[:2] != (b, l):
        raise ValueError(f"codes {tuple(codes.shape)} do not match history {tuple(history.shape)}")
    if lengths.shape != (b,):
        raise ValueError(f"lengths must be [B={b}], got {tuple(lengths.shape)}")
    s = codes.shape[2]
    valid = _valid_mask(lengths, l)  # [B,L]
    live = codes[valid]
    if live.numel() and (int(live.min()) < 0 or int(live.max()) >= num_buckets):
        raise ValueError(f"codes at valid positions must lie in [0, {num_buckets})")
    codes = codes.long().clamp(0, num_buckets - 1)  # padded positions may hold anything
    # Scatter-add per signature: memory O(B*L*d) instead of a [B,L,S,nb] one-hot (0.26 GB at
    # B=256, L=2000). index_add_ is differentiable w.r.t. its source (backward = gather).
    src = (history * valid[:, :, None].to(history.dtype)).reshape(b * l, d)  # padded rows add zero
    row_base = (torch.arange(b, device=history.device) * num_buckets)[:, None]  # [B,1]
    tables = []
    for sig in range(s):
        idx = (row_base + codes[:, :, sig]).reshape(b * l)  # [B*L] -> row of a [B*nb, d] table
        tables.append(history.new_zeros(b * num_buckets, d).index_add(0, idx, src).view(b, num_buckets, d))
    if not tables:
        return history.new_zeros(b, 0, num_buckets, d)
    return torch.stack(tables, dim=1)  # [B,S,nb,d]


def sdim_gather(table: torch.Tensor, candidate_codes: torch.Tensor) -> torch.Tensor:
    """Per candidate: each signature's bucket sum, l2-normalised (zero stays zero), mean over signatures.

    table [B,S,nb,d], candidate_codes [B,C,S] -> [B,C,d]. Differentiable w.r.t. table.
    """
    if table.dim() != 4 or candidate_codes.dim() != 3:
        raise ValueError(
            f"table must be [B,S,nb,d] and candidate_codes [B,C,S]; got {tuple(table.shape)}, {tuple(candidate_codes.shape)}"
        )
    b, s, nb, d = table.shape
    c = candidate_codes.shape[1]
    if candidate_codes.shape[0] != b or candidate_codes.shape[2] != s:
        raise ValueError(f"candidate_codes {tuple(candidate_codes.shape)} do not match table {tuple(table.shape)}")
    flat = table.reshape(b, s * nb, d)
    idx = candidate_codes.long() + torch.arange(s, device=table.device)[None, None, :] * nb  # [B,C,S]
    picked = flat.gather(1, idx.reshape(b, c * s, 1).expand(b, c * s, d)).reshape(b, c, s, d)
    picked = F.normalize(picked, p=2.0, dim=-1, eps=1e-12)  # zero vector stays zero
    return picked.mean(dim=2)  # [B,C,d]
