"""SimHash codes: x [N,d] @ projections [d,S*tau] -> sign bits packed into int64 [N,S].

One program per (block of rows, signature): the [BLOCK_N, tau] projection tile is a tl.dot in fp32
(IEEE precision, so signs match the fp32 reference; tf32 would flip bits near zero), the sign bits
are packed with shifts and summed. The projected values never reach memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton._common import check_cuda_or_interp, configs, pow2


@triton.autotune(
    configs=configs(
        [triton.Config({"BLOCK_N": bn}, num_warps=w) for bn in (64, 128) for w in (4, 8)],
        triton.Config({"BLOCK_N": 32}, num_warps=4)),
    key=["N_BUCKET", "D", "TAU"],
)
@triton.jit
def _simhash_kernel(x_ptr, p_ptr, out_ptr, N, N_BUCKET, D, S, TAU: tl.constexpr,
                    TAU_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    bits = tl.arange(0, TAU_P)
    rmask = rows < N
    bmask = bits < TAU
    acc = tl.zeros((BLOCK_N, TAU_P), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        dmask = dd < D
        xt = tl.load(x_ptr + rows[:, None].to(tl.int64) * D + dd[None, :],
                     mask=rmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        pt = tl.load(p_ptr + dd[:, None] * (S * TAU) + s * TAU + bits[None, :],
                     mask=dmask[:, None] & bmask[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(xt, pt, acc, input_precision="ieee")
    weight = tl.where(bmask, tl.full((TAU_P,), 1, tl.int64) << bits.to(tl.int64), 0)
    code = tl.sum(tl.where(acc > 0, weight[None, :], 0), axis=1)
    tl.store(out_ptr + rows.to(tl.int64) * S + s, code, mask=rmask)


def simhash_codes_triton(x: torch.Tensor, projections: torch.Tensor, tau: int) -> torch.Tensor:
    """x [..., d], projections [d, S*tau] -> int64 [..., S] (same semantics as the reference)."""
    check_cuda_or_interp(x, projections)
    d, m = projections.shape
    if x.shape[-1] != d or m % tau != 0 or tau < 1 or tau > 62:
        raise ValueError(f"simhash: x {tuple(x.shape)}, projections {tuple(projections.shape)}, tau={tau} mismatch")
    s = m // tau
    lead = x.shape[:-1]
    x2 = x.reshape(-1, d).contiguous()
    n = x2.shape[0]
    out = torch.empty((n, s), dtype=torch.int64, device=x.device)
    if n and s:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), s)  # noqa: E731
        _simhash_kernel[grid](x2, projections.contiguous(), out, n, pow2(n), d, s, TAU=tau,
                              TAU_P=pow2(tau, 16), BLOCK_D=min(pow2(d, 16), 64))
    return out.reshape(*lead, s)
