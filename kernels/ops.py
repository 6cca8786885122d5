"""Public entry points of the retrieval-stage kernels (see docs/INTERFACES.md).

Temporary thin layer: every op calls the plain-PyTorch reference in `kernels/reference/`
(imported lazily so this module imports before the reference lands). The custom-op /
Triton dispatch replaces these bodies without changing the signatures.
"""

from __future__ import annotations

import torch


def simhash_codes(x: torch.Tensor, projections: torch.Tensor, tau: int) -> torch.Tensor:
    """x [..., d], projections [d, S*tau] -> int64 codes [..., S]."""
    from kernels.reference.simhash import simhash_codes as ref

    return ref(x, projections, tau)


def sdim_bucket_table(history: torch.Tensor, codes: torch.Tensor, lengths: torch.Tensor,
                      num_buckets: int) -> torch.Tensor:
    """history [B,L,d], codes [B,L,S], lengths [B] -> table [B,S,num_buckets,d]."""
    from kernels.reference.sdim_table import sdim_bucket_table as ref

    return ref(history, codes, lengths, num_buckets)


def sdim_gather(table: torch.Tensor, candidate_codes: torch.Tensor) -> torch.Tensor:
    """table [B,S,nb,d], candidate_codes [B,C,S] -> [B,C,d]."""
    from kernels.reference.sdim_table import sdim_gather as ref

    return ref(table, candidate_codes)


def topk_target_search(queries: torch.Tensor, keys: torch.Tensor, lengths: torch.Tensor,
                       k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """queries [B,C,da], keys [B,L,da], lengths [B] -> (scores [B,C,k] f32, indices [B,C,k] i64)."""
    from kernels.reference.topk_search import topk_target_search as ref

    return ref(queries, keys, lengths, k)


def topk_aggregate(scores: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """scores/indices [B,C,k], values [B,L,dr] -> [B,C,dr]."""
    from kernels.reference.topk_search import topk_aggregate as ref

    return ref(scores, indices, values)


def pad_jagged(values: torch.Tensor, offsets: torch.Tensor, max_len: int | None = None,
               padding_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Jagged values [N, ...] + offsets [B+1] -> (padded [B, max_len, ...] right-padded, lengths [B]).

    Rows longer than max_len keep their most recent (last) max_len entries.
    """
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"offsets must be 1-D with B+1 entries, got shape {tuple(offsets.shape)}")
    offsets = offsets.to(torch.int64)
    lengths = offsets[1:] - offsets[:-1]
    if bool((lengths < 0).any()):
        raise ValueError("offsets must be non-decreasing")
    if int(offsets[-1]) != values.shape[0]:
        raise ValueError(f"offsets[-1]={int(offsets[-1])} != values.shape[0]={values.shape[0]}")
    longest = int(lengths.max()) if lengths.numel() else 0
    max_len = longest if max_len is None else max_len
    kept = lengths.clamp(max=max_len)
    b = lengths.numel()
    out = values.new_full((b, max_len, *values.shape[1:]), padding_value)
    pos = torch.arange(max_len, device=values.device)
    mask = pos[None, :] < kept[:, None]                               # [B, max_len]
    src = (offsets[1:, None] - kept[:, None] + pos[None, :])[mask]   # last `kept` entries per row
    out[mask] = values[src]
    return out, kept
