"""SDIM's long-term interest: SimHash sampling instead of attention (Cao et al., CIKM 2022).

m random hyperplanes (frozen, never trained, drawn from a seeded generator and stored as a
persistent buffer so they are saved with the weights) are grouped into S = m / tau signatures of
tau bits. A behaviour "collides" with a candidate under a signature when all tau sign bits agree,
i.e. when both fall into the same of the 2**tau buckets. Per signature the colliding behaviour
embeddings are summed, l2-normalised (empty bucket -> zero), then averaged over signatures.

Because the bucket sums do not depend on the candidate, they form a per-user table
[S, 2**tau, d] (the BSE table) that serving caches; `gather` then scores any candidate.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from kernels import ops


class SimHashInterest(nn.Module):
    """Hash-sampling long-term interest: `table(history)` then `gather(table, candidates)`."""

    def __init__(self, dim: int, num_hashes: int = 48, tau: int = 3, seed: int = 0) -> None:
        super().__init__()
        if tau < 1 or num_hashes < tau or num_hashes % tau:
            raise ValueError(f"num_hashes ({num_hashes}) must be a positive multiple of tau ({tau})")
        self.dim, self.tau = dim, tau
        self.num_signatures = num_hashes // tau
        self.num_buckets = 2**tau
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("projections", torch.randn(dim, num_hashes, generator=gen), persistent=True)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d] -> bucket codes [..., S] (int64, no gradient)."""
        return ops.simhash_codes(x.detach(), self.projections, self.tau)

    def table(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """history [B,L,d] right-padded, lengths [B] -> bucket sums [B,S,2**tau,d]."""
        return ops.sdim_bucket_table(history, self.codes(history), lengths, self.num_buckets)

    def gather(self, table: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """table [B,S,nb,d], candidates [B,C,d] -> long-term interest [B,C,d]."""
        return ops.sdim_gather(table, self.codes(candidates))

    def forward(self, history: torch.Tensor, lengths: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """End to end: [B,L,d], [B], [B,C,d] -> [B,C,d]."""
        return self.gather(self.table(history, lengths), candidates)

    def update_table(
        self, table: torch.Tensor, added: torch.Tensor, removed: torch.Tensor
    ) -> torch.Tensor:
        """Incremental BSE update of one user's table [S,nb,d]: add `added` [E,d], subtract `removed` [R,d]."""
        nb = self.num_buckets
        for rows, sign in ((added, 1.0), (removed, -1.0)):
            if rows.shape[0] == 0:
                continue
            n = torch.tensor([rows.shape[0]], device=rows.device)
            delta = ops.sdim_bucket_table(rows[None], self.codes(rows)[None], n, nb)[0]  # [S,nb,d]
            table = table + sign * delta
        return table
