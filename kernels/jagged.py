"""Jagged (values + offsets, as the sequences parquet stores histories) <-> padded + lengths.

The ops in `kernels.ops` take padded [B, L, ...] tensors with lengths; `Jagged` (or a
`torch.nested` jagged-layout tensor) is accepted at the op boundary and padded here.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Jagged(NamedTuple):
    """Rows of variable length: values [N, ...], offsets [B+1] (row b = values[offsets[b]:offsets[b+1]]).
    max_len: pad/truncate to this length (keeping each row's LAST entries); None = longest row."""

    values: torch.Tensor
    offsets: torch.Tensor
    max_len: int | None = None


def pad_jagged(values: torch.Tensor, offsets: torch.Tensor, max_len: int | None = None,
               padding_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Jagged values [N, ...] + offsets [B+1] -> (right-padded [B, max_len, ...], lengths [B] int64).

    Rows longer than max_len keep their most recent (last) max_len entries.
    """
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"offsets must be 1-D with B+1 entries, got shape {tuple(offsets.shape)}")
    offsets = offsets.to(device=values.device, dtype=torch.int64)
    lengths = offsets[1:] - offsets[:-1]
    if bool((lengths < 0).any()) or int(offsets[0]) < 0:
        raise ValueError("offsets must be non-negative and non-decreasing")
    if int(offsets[-1]) > values.shape[0]:
        raise ValueError(f"offsets[-1]={int(offsets[-1])} exceeds values.shape[0]={values.shape[0]}")
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    if max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    kept = lengths.clamp(max=max_len)
    out = values.new_full((lengths.numel(), max_len, *values.shape[1:]), padding_value)
    pos = torch.arange(max_len, device=values.device)
    mask = pos[None, :] < kept[:, None]                               # [B, max_len]
    src = (offsets[1:, None] - kept[:, None] + pos[None, :])[mask]   # last `kept` entries per row
    out[mask] = values[src]
    return out, kept


def to_padded(x: torch.Tensor | Jagged, lengths: torch.Tensor | None,
              name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise an op input: padded tensor + lengths, `Jagged`, or a torch.nested jagged tensor."""
    if isinstance(x, Jagged):
        if lengths is not None:
            raise ValueError(f"{name}: lengths must be None when {name} is Jagged (the offsets give them)")
        return pad_jagged(x.values, x.offsets, x.max_len)
    if isinstance(x, torch.Tensor) and x.is_nested:
        if lengths is not None:
            raise ValueError(f"{name}: lengths must be None for a nested (jagged) tensor")
        return pad_jagged(x.values(), x.offsets())
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a Tensor or Jagged, got {type(x).__name__}")
    if lengths is None:
        raise ValueError(f"{name}: padded input needs lengths [B]")
    return x, lengths
