"""`torch.library` custom ops ("recsys::<name>") for the retrieval-stage kernels.

Dispatch by tensor device: the default (CPU) implementation is the plain-PyTorch reference in
`kernels.reference`, the CUDA implementation is the Triton kernel in `kernels.triton`. Every op
has a fake (meta) implementation - shapes and dtypes only - so torch.compile / FakeTensorMode can
trace through it, and the differentiable ops register their backward as further custom ops
(CPU: explicit PyTorch formulas checked against autograd through the reference; CUDA: Triton).
The Triton modules are imported lazily, only when a CUDA tensor arrives.

No switch sits on the call path: tests that check whole models on the Triton path without a GPU
register "cpu" kernels on these ops from test code (tests/kernels/triton_on_cpu.py, through
torch.library's `register_kernel` / `set_kernel_enabled`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.reference import sdim_table as _ref_sdim
from kernels.reference import simhash as _ref_simhash
from kernels.reference import topk_search as _ref_topk

_EPS = 1e-12  # F.normalize's eps (the reference's l2 normalisation)


# ---------------------------------------------------------------- simhash_codes
@torch.library.custom_op("recsys::simhash_codes", mutates_args=())
def simhash_codes(x: Tensor, projections: Tensor, tau: int) -> Tensor:
    return _ref_simhash.simhash_codes(x, projections, tau)


@simhash_codes.register_kernel("cuda")
def _simhash_cuda(x: Tensor, projections: Tensor, tau: int) -> Tensor:
    from kernels.triton.simhash import simhash_codes_triton

    return simhash_codes_triton(x, projections, tau)


@simhash_codes.register_fake
def _simhash_fake(x: Tensor, projections: Tensor, tau: int) -> Tensor:
    return x.new_empty((*x.shape[:-1], projections.shape[1] // tau), dtype=torch.int64)


# ---------------------------------------------------------------- sdim_bucket_table
@torch.library.custom_op("recsys::sdim_bucket_table", mutates_args=())
def sdim_bucket_table(history: Tensor, codes: Tensor, lengths: Tensor, num_buckets: int) -> Tensor:
    return _ref_sdim.sdim_bucket_table(history, codes, lengths, num_buckets)


@sdim_bucket_table.register_kernel("cuda")
def _table_cuda(history: Tensor, codes: Tensor, lengths: Tensor, num_buckets: int) -> Tensor:
    from kernels.triton.sdim import sdim_bucket_table_triton

    return sdim_bucket_table_triton(history, codes, lengths, num_buckets)


@sdim_bucket_table.register_fake
def _table_fake(history: Tensor, codes: Tensor, lengths: Tensor, num_buckets: int) -> Tensor:
    b, _, d = history.shape
    return history.new_empty((b, codes.shape[2], num_buckets, d))


@torch.library.custom_op("recsys::sdim_bucket_table_backward", mutates_args=())
def sdim_bucket_table_backward(grad_table: Tensor, codes: Tensor, lengths: Tensor) -> Tensor:
    """grad_history[b,l] = sum_s grad_table[b, s, codes[b,l,s]] for l < lengths[b], else 0."""
    b, s, nb, d = grad_table.shape
    l = codes.shape[1]
    idx = codes.long().clamp(0, nb - 1) + torch.arange(s, device=codes.device) * nb    # [B,L,S]
    flat = grad_table.reshape(b, s * nb, d)
    picked = flat.gather(1, idx.reshape(b, l * s, 1).expand(b, l * s, d)).reshape(b, l, s, d)
    valid = torch.arange(l, device=codes.device)[None, :] < lengths[:, None]           # [B,L]
    return (picked.sum(2) * valid[:, :, None].to(grad_table.dtype)).contiguous()


@sdim_bucket_table_backward.register_kernel("cuda")
def _table_bwd_cuda(grad_table: Tensor, codes: Tensor, lengths: Tensor) -> Tensor:
    from kernels.triton.sdim import sdim_bucket_table_backward_triton

    return sdim_bucket_table_backward_triton(grad_table, codes, lengths, grad_table.dtype)


@sdim_bucket_table_backward.register_fake
def _table_bwd_fake(grad_table: Tensor, codes: Tensor, lengths: Tensor) -> Tensor:
    return grad_table.new_empty((grad_table.shape[0], codes.shape[1], grad_table.shape[3]))


def _table_setup(ctx, inputs, output) -> None:
    _, codes, lengths, _ = inputs
    ctx.save_for_backward(codes, lengths)


def _table_backward(ctx, grad):
    codes, lengths = ctx.saved_tensors
    return sdim_bucket_table_backward(grad.contiguous(), codes, lengths), None, None, None


sdim_bucket_table.register_autograd(_table_backward, setup_context=_table_setup)


# ---------------------------------------------------------------- sdim_gather
@torch.library.custom_op("recsys::sdim_gather", mutates_args=())
def sdim_gather(table: Tensor, candidate_codes: Tensor) -> Tensor:
    return _ref_sdim.sdim_gather(table, candidate_codes)


@sdim_gather.register_kernel("cuda")
def _gather_cuda(table: Tensor, candidate_codes: Tensor) -> Tensor:
    from kernels.triton.sdim import sdim_gather_triton

    return sdim_gather_triton(table, candidate_codes)


@sdim_gather.register_fake
def _gather_fake(table: Tensor, candidate_codes: Tensor) -> Tensor:
    return table.new_empty((table.shape[0], candidate_codes.shape[1], table.shape[3]))


@torch.library.custom_op("recsys::sdim_gather_backward", mutates_args=())
def sdim_gather_backward(grad_out: Tensor, table: Tensor, candidate_codes: Tensor) -> Tensor:
    """Scatter-add of the l2-normalise Jacobian^T (grad_out / S) into each picked bucket."""
    b, s, nb, d = table.shape
    c = candidate_codes.shape[1]
    idx = candidate_codes.long() + torch.arange(s, device=table.device) * nb           # [B,C,S]
    flat_idx = idx.reshape(b, c * s, 1).expand(b, c * s, d)
    v = table.float().reshape(b, s * nb, d).gather(1, flat_idx).reshape(b, c, s, d)
    g = grad_out.float()[:, :, None, :] / s                                            # [B,C,1,d]
    norm = v.norm(dim=-1, keepdim=True)
    inv = 1.0 / norm.clamp_min(_EPS)
    u = v * inv
    gv = torch.where(norm > _EPS, (g - u * (u * g).sum(-1, keepdim=True)) * inv, g * inv)
    out = torch.zeros(b, s * nb, d, dtype=torch.float32, device=table.device)
    out.scatter_add_(1, flat_idx, gv.reshape(b, c * s, d))
    return out.reshape(b, s, nb, d).to(table.dtype)


@sdim_gather_backward.register_kernel("cuda")
def _gather_bwd_cuda(grad_out: Tensor, table: Tensor, candidate_codes: Tensor) -> Tensor:
    from kernels.triton.sdim import sdim_gather_backward_triton

    return sdim_gather_backward_triton(grad_out, table, candidate_codes)


@sdim_gather_backward.register_fake
def _gather_bwd_fake(grad_out: Tensor, table: Tensor, candidate_codes: Tensor) -> Tensor:
    return torch.empty_like(table)


def _gather_setup(ctx, inputs, output) -> None:
    table, codes = inputs
    ctx.save_for_backward(table, codes)


def _gather_backward(ctx, grad):
    table, codes = ctx.saved_tensors
    return sdim_gather_backward(grad.contiguous(), table, codes), None


sdim_gather.register_autograd(_gather_backward, setup_context=_gather_setup)


# ---------------------------------------------------------------- topk_target_search
@torch.library.custom_op("recsys::topk_target_search", mutates_args=())
def topk_target_search(queries: Tensor, keys: Tensor, lengths: Tensor, k: int) -> tuple[Tensor, Tensor]:
    return _ref_topk.topk_target_search(queries, keys, lengths, k)


@topk_target_search.register_kernel("cuda")
def _search_cuda(queries: Tensor, keys: Tensor, lengths: Tensor, k: int) -> tuple[Tensor, Tensor]:
    from kernels.triton.topk import topk_target_search_triton

    return topk_target_search_triton(queries, keys, lengths, k)


@topk_target_search.register_fake
def _search_fake(queries: Tensor, keys: Tensor, lengths: Tensor, k: int) -> tuple[Tensor, Tensor]:
    b, c, _ = queries.shape
    return (queries.new_empty((b, c, k), dtype=torch.float32), queries.new_empty((b, c, k), dtype=torch.int64))


# ---------------------------------------------------------------- topk_aggregate
@torch.library.custom_op("recsys::topk_aggregate", mutates_args=())
def topk_aggregate(scores: Tensor, indices: Tensor, values: Tensor) -> Tensor:
    return _ref_topk.topk_aggregate(scores, indices, values)


@topk_aggregate.register_kernel("cuda")
def _aggregate_cuda(scores: Tensor, indices: Tensor, values: Tensor) -> Tensor:
    from kernels.triton.topk import topk_aggregate_triton

    return topk_aggregate_triton(scores, indices, values)


@topk_aggregate.register_fake
def _aggregate_fake(scores: Tensor, indices: Tensor, values: Tensor) -> Tensor:
    return values.new_empty((scores.shape[0], scores.shape[1], values.shape[2]))


@torch.library.custom_op("recsys::topk_aggregate_backward", mutates_args=())
def topk_aggregate_backward(grad_out: Tensor, scores: Tensor, indices: Tensor,
                            values: Tensor) -> tuple[Tensor, Tensor]:
    """(grad_scores, grad_values): softmax Jacobian over valid slots; scatter-add of w_j * grad_out."""
    b, c, k = scores.shape
    l, dr = values.shape[1], values.shape[2]
    valid = indices >= 0
    s = scores.float().masked_fill(~valid, 0.0)
    m = s.masked_fill(~valid, float("-inf")).amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m) * valid
    w = e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)          # [B,C,k]
    g = grad_out.float()
    grad_values = torch.zeros(b, l, dr, dtype=torch.float32, device=values.device)
    if l == 0 or k == 0:
        return torch.zeros_like(scores), grad_values.to(values.dtype)
    idx = indices.clamp_min(0).reshape(b, c * k, 1).expand(b, c * k, dr)
    picked = values.float().gather(1, idx).reshape(b, c, k, dr)
    gw = torch.einsum("bcd,bckd->bck", g, picked)
    gs = (w * (gw - (w * gw).sum(-1, keepdim=True))).masked_fill(~valid, 0.0)
    contrib = (w[..., None] * g[:, :, None, :]).reshape(b, c * k, dr)
    grad_values.scatter_add_(1, idx, contrib)
    return gs.to(scores.dtype), grad_values.to(values.dtype)


@topk_aggregate_backward.register_kernel("cuda")
def _aggregate_bwd_cuda(grad_out: Tensor, scores: Tensor, indices: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    from kernels.triton.topk import topk_aggregate_backward_triton

    return topk_aggregate_backward_triton(grad_out, scores, indices, values)


@topk_aggregate_backward.register_fake
def _aggregate_bwd_fake(grad_out: Tensor, scores: Tensor, indices: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(scores), torch.empty_like(values)


def _aggregate_setup(ctx, inputs, output) -> None:
    scores, indices, values = inputs
    ctx.save_for_backward(scores, indices, values)


def _aggregate_backward(ctx, grad):
    scores, indices, values = ctx.saved_tensors
    gs, gv = topk_aggregate_backward(grad.contiguous(), scores, indices, values)
    return gs, None, gv


topk_aggregate.register_autograd(_aggregate_backward, setup_context=_aggregate_setup)
