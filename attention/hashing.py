"""SDIM's long-term interest: SimHash sampling instead of attention (Cao et al., CIKM 2022).

m random hyperplanes (frozen, never trained, drawn from a seeded generator and stored as a
persistent buffer so they are saved with the weights) are grouped into S = m / tau signatures of
tau bits. A behaviour "collides" with a candidate under a signature when all tau sign bits agree,
i.e. when both fall into the same of the 2**tau buckets. Per signature the colliding behaviour
embeddings are summed, l2-normalised (empty bucket -> zero), then averaged over signatures.

Because the bucket sums do not depend on the candidate, they form a per-user table
[S, 2**tau, d] (the BSE table) that serving caches; `gather` then scores any candidate.

Training (one or a few candidates per history) does not need the other 2**tau - 1 buckets:
`forward` uses the paper's collision form, U[b,c,s] = sum_l 1[code_s(h_l) = code_s(q_c)] h_l, i.e.
one 0/1 collision mask [B,C,S,L] times the history (a bmm, whose backward is another bmm), with
the codes from one [B*L, d] x [d, m] matmul per embedding field (no concatenated copy) and the sign
bits packed into uint8 codes with byte shifts. The scatter-add table (`kernels.ops.sdim_bucket_table`)
builds all S * 2**tau sums and its backward is a gather over [B*L*S] rows; with int64 code arithmetic
the old training step took ~1.5 s at L=1,024, batch 256 (torch.profiler; 1.2 s at batch 128 in
the first sdim_speed table) against 0.08-0.14 s now (benchmarks/results/sdim_speed.json).
Both forms give the same numbers up to float summation order (tested). A caller that knows the
behaviour ids can pass `history_codes` to `forward`: SDIM hashes each distinct id of a batch once,
so the projection costs O(distinct ids x m) instead of O(B x L x m).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

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

    def small_codes(self, x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """x [..., d] (or its fields, concatenated along the last dim) -> codes [..., S], uint8 when
        tau <= 8 and int16 when tau <= 15: the same bits as `codes` (x @ P > 0), packed with shifts
        instead of int64 math (the int64 path made a tau-10 step 2.5x slower than tau 3 at L=1,024)."""
        parts = (x,) if isinstance(x, torch.Tensor) else x
        lead = parts[0].shape[:-1]
        rot, row = None, 0
        for part in parts:  # x @ P = sum over fields of field @ P[field rows]: no concatenated copy
            w = part.shape[-1]
            flat = part.detach().reshape(-1, w).to(self.projections.dtype)
            proj = self.projections[row:row + w]
            rot = flat @ proj if rot is None else rot.addmm_(flat, proj)  # [N, S*tau], in place
            row += w
        if row != self.dim:
            raise ValueError(f"history fields add up to width {row}, expected {self.dim}")
        bits = (rot > 0).view(-1, self.num_signatures, self.tau)  # [N,S,tau] bool
        if self.tau > 15:
            return self.codes(torch.cat(parts, dim=-1))
        bits = bits.view(torch.uint8)
        # 9..15 bits go to int16 (torch has no uint16 shifts on every build); same bits either way
        dtype = torch.uint8 if self.tau <= 8 else torch.int16
        code = bits[..., 0].to(dtype, copy=True)
        for b in range(1, self.tau):
            code |= bits[..., b].to(dtype) << b
        return code.view(*lead, self.num_signatures)  # [..., S]

    def forward(
        self, history: torch.Tensor | tuple[torch.Tensor, ...], lengths: torch.Tensor, candidates: torch.Tensor,
        history_codes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """End to end (collision form): history [B,L,d] (or a tuple of field tensors [B,L,d_k] whose
        concatenation is the behaviour embedding), lengths [B], candidates [B,C,d] -> [B,C,d].
        `history_codes` [B,L,S] = `small_codes(history)` when the caller has them already (SDIM hashes
        each distinct behaviour id once instead of every position)."""
        parts = (history,) if isinstance(history, torch.Tensor) else tuple(history)
        b, l = parts[0].shape[:2]
        c = candidates.shape[1]
        hc = (self.small_codes(parts) if history_codes is None else history_codes).transpose(1, 2)  # [B,S,L]
        qc = self.small_codes(candidates)  # [B,C,S]
        s = hc.shape[1]
        valid = torch.arange(l, device=lengths.device)[None, :] < lengths[:, None]  # [B,L]
        hit = (hc[:, None, :, :] == qc[:, :, :, None]) & valid[:, None, None, :]  # [B,C,S,L]
        hit = hit.to(parts[0].dtype).reshape(b, c * s, l)
        sums = torch.cat([torch.bmm(hit, part) for part in parts], dim=-1)  # [B,C*S,d] colliding sums
        sums = F.normalize(sums.view(b, c, s, -1), p=2.0, dim=-1, eps=1e-12)  # zero stays zero
        return sums.mean(dim=2)  # [B,C,d]

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
