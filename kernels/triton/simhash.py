"""SimHash codes: x [N,d] @ projections [d,S*tau] -> sign bits packed into int64 [N,S].

One program per BLOCK_N rows computes all S*tau projections at once (x is read from memory
exactly once; the projection matrix, padded on the host to [d, S_P*TAU_P] with zero columns, is
tiny and stays in cache): a tl.dot in "tf32x3" on the GPU (near-fp32 on tensor cores: only
projections within ~1e-6 relative of zero can flip a bit against the fp32 reference; single-pass
tf32 would flip many; IEEE fp32 took 0.82 ms at N=2M d=32 S*tau=64 on an H200, 6.5x the memory
floor), IEEE under the interpreter; then the [BLOCK_N, S_P, TAU_P] sign bits are weighted by 2**bit and
summed. The projected values never reach memory. Fixed block sizes (no autotuning).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton._common import check_cuda_or_interp, interpreting, pow2


@triton.jit(do_not_specialize=["N", "D", "S"])
def _simhash_kernel(x_ptr, p_ptr, out_ptr, N, D, S, TAU: tl.constexpr, S_P: tl.constexpr, TAU_P: tl.constexpr,
                    PREC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    cols = tl.arange(0, S_P * TAU_P)
    acc = tl.zeros((BLOCK_N, S_P * TAU_P), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        dmask = dd < D
        xt = tl.load(x_ptr + rows[:, None].to(tl.int64) * D + dd[None, :],
                     mask=rmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        pt = tl.load(p_ptr + dd[:, None] * (S_P * TAU_P) + cols[None, :], mask=dmask[:, None], other=0.0)
        acc = tl.dot(xt, pt, acc, input_precision=PREC)
    bits = tl.reshape(acc > 0, (BLOCK_N, S_P, TAU_P))
    bit = tl.arange(0, TAU_P)
    weight = tl.where(bit < TAU, tl.full((TAU_P,), 1, tl.int64) << bit.to(tl.int64), 0)
    code = tl.sum(tl.where(bits, weight[None, None, :], 0), axis=2)                    # [BLOCK_N, S_P]
    sig = tl.arange(0, S_P)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * S + sig[None, :], code, mask=rmask[:, None] & (sig < S)[None, :])


def simhash_plan(s: int, tau: int) -> tuple[int, int, int]:
    """(S_P, TAU_P, BLOCK_N): padded signature/bit counts (S_P*TAU_P >= 16 for tl.dot) and rows per
    program (accumulator tile <= 8192 fp32)."""
    s_p = pow2(s)
    tau_p = max(pow2(tau), 16 // s_p if s_p < 16 else 1)
    return s_p, tau_p, max(16, min(128, 8192 // (s_p * tau_p)))


def simhash_codes_triton(x: torch.Tensor, projections: torch.Tensor, tau: int) -> torch.Tensor:
    """x [..., d], projections [d, S*tau] -> int64 [..., S] (same semantics as the reference)."""
    check_cuda_or_interp(x, projections)
    d, m = projections.shape
    if x.shape[-1] != d or tau < 1 or tau > 62 or m % tau != 0:
        raise ValueError(f"simhash: x {tuple(x.shape)}, projections {tuple(projections.shape)}, tau={tau} mismatch")
    s = m // tau
    lead = x.shape[:-1]
    x2 = x.reshape(-1, d).contiguous()
    n = x2.shape[0]
    out = torch.empty((n, s), dtype=torch.int64, device=x.device)
    if n and s:
        s_p, tau_p, block_n = simhash_plan(s, tau)
        padded = torch.zeros((d, s_p, tau_p), dtype=torch.float32, device=x.device)
        padded[:, :s, :tau] = projections.reshape(d, s, tau).float()
        _simhash_kernel[(triton.cdiv(n, block_n),)](x2, padded, out, n, d, s, TAU=tau, S_P=s_p, TAU_P=tau_p,
                                                    PREC="ieee" if interpreting() else "tf32x3", BLOCK_D=min(pow2(d, 16), 64), BLOCK_N=block_n, num_warps=4)
    return out.reshape(*lead, s)
