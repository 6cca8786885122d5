"""Plain-PyTorch reference implementations of the retrieval-stage ops.

These are the CPU path of `kernels.ops` and the oracle the Triton kernels are tested against.
Semantics are exactly those of docs/INTERFACES.md ("Kernel ops").
"""

from __future__ import annotations

import torch

from kernels.reference.sdim_table import sdim_bucket_table, sdim_gather
from kernels.reference.simhash import simhash_codes
from kernels.reference.topk_search import topk_aggregate, topk_target_search


def pad_jagged(values: torch.Tensor, offsets: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Jagged rows (values [N, ...], offsets [B+1]) -> right-padded [B, max_len, ...] and lengths [B].

    Rows longer than max_len keep their LAST max_len entries (the most recent behaviours).
    Padding is zero.
    """
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError("offsets must be a 1-d tensor [B+1]")
    if int(offsets[0]) != 0 or int(offsets[-1]) != values.shape[0]:
        raise ValueError(f"offsets must start at 0 and end at len(values)={values.shape[0]}")
    starts, ends = offsets[:-1].long(), offsets[1:].long()
    if bool((ends < starts).any()):
        raise ValueError("offsets must be non-decreasing")
    lengths = (ends - starts).clamp_max(max_len)  # [B]
    first = ends - lengths  # [B]
    b = lengths.shape[0]
    pos = torch.arange(max_len, device=values.device)  # [max_len]
    valid = pos[None, :] < lengths[:, None]  # [B,max_len]
    src = (first[:, None] + pos[None, :]).clamp_max(max(values.shape[0] - 1, 0))
    out = values.new_zeros((b, max_len, *values.shape[1:]))
    if values.shape[0] > 0:
        out[valid] = values[src[valid]]
    return out, lengths


__all__ = [
    "pad_jagged",
    "sdim_bucket_table",
    "sdim_gather",
    "simhash_codes",
    "topk_aggregate",
    "topk_target_search",
]
