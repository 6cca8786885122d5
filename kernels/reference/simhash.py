"""SimHash signature codes (SDIM), plain PyTorch: the CPU path and the oracle for the Triton kernel."""

from __future__ import annotations

import torch


def simhash_codes(x: torch.Tensor, projections: torch.Tensor, tau: int) -> torch.Tensor:
    """Pack SimHash sign bits into one integer code per signature.

    x [..., d], projections [d, S*tau] -> int64 [..., S], where bit b of signature s is
    `x @ projections[:, s*tau + b] > 0` and code = sum_b bit_b * 2**b (so codes lie in [0, 2**tau)).
    """
    if tau < 1:
        raise ValueError(f"tau must be >= 1, got {tau}")
    if projections.dim() != 2:
        raise ValueError(f"projections must be [d, S*tau], got shape {tuple(projections.shape)}")
    d, m = projections.shape
    if x.shape[-1] != d:
        raise ValueError(f"x last dim {x.shape[-1]} != projections rows {d}")
    if m % tau != 0:
        raise ValueError(f"projections columns {m} not a multiple of tau={tau}")
    s = m // tau
    rot = x.to(projections.dtype) @ projections  # [..., S*tau]
    bits = (rot > 0).to(torch.int64).reshape(*x.shape[:-1], s, tau)  # [..., S, tau]
    weights = 2 ** torch.arange(tau, device=x.device, dtype=torch.int64)  # [tau]
    return (bits * weights).sum(-1)  # [..., S]
