"""Public entry points of the retrieval-stage kernels (semantics: docs/INTERFACES.md "Kernel ops").

Each call validates shapes (clear errors naming the argument) and calls the `recsys::<name>`
custom op, which dispatches by tensor device: CPU -> `kernels.reference`, CUDA -> `kernels.triton`.
Histories are padded [B, L, ...] plus lengths [B]: the project keeps them jagged at rest (values +
offsets in the sequences parquet, `recsys.data.sequences.JaggedSequences`, the serving store) and
cuts padded windows for compute (README "One data contract").
"""

from __future__ import annotations

import torch

from kernels import _library as _lib

__all__ = ["sdim_bucket_table", "sdim_gather", "simhash_codes",
           "topk_aggregate", "topk_target_search"]


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _check_lengths(lengths: torch.Tensor, b: int, device: torch.device) -> torch.Tensor:
    _need(isinstance(lengths, torch.Tensor), f"lengths must be an integer tensor [B={b}], got {type(lengths).__name__}")
    _need(lengths.shape == (b,), f"lengths must be [B={b}], got {tuple(lengths.shape)}")
    _need(not lengths.is_floating_point(), f"lengths must be an integer tensor, got {lengths.dtype}")
    return lengths.to(device=device, dtype=torch.int64)


def simhash_codes(x: torch.Tensor, projections: torch.Tensor, tau: int) -> torch.Tensor:
    """x [..., d], projections [d, S*tau] -> int64 codes [..., S] in [0, 2**tau)."""
    _need(projections.dim() == 2, f"projections must be [d, S*tau], got {tuple(projections.shape)}")
    _need(tau >= 1 and projections.shape[1] % tau == 0,
          f"tau={tau} must be >= 1 and divide projections columns {projections.shape[1]}")
    _need(x.shape[-1] == projections.shape[0], f"x last dim {x.shape[-1]} != projections rows {projections.shape[0]}")
    return _lib.simhash_codes(x, projections, tau)


def sdim_bucket_table(history: torch.Tensor, codes: torch.Tensor, lengths: torch.Tensor,
                      num_buckets: int) -> torch.Tensor:
    """history [B,L,d], codes [B,L,S], lengths [B] -> [B,S,num_buckets,d]; differentiable w.r.t. history."""
    _need(history.dim() == 3, f"history must be [B,L,d], got {tuple(history.shape)}")
    _need(codes.dim() == 3 and codes.shape[:2] == history.shape[:2],
          f"codes must be [B,L,S] matching history {tuple(history.shape)}, got {tuple(codes.shape)}")
    _need(not codes.is_floating_point(), f"codes must be integer, got {codes.dtype}")
    _need(num_buckets >= 1, f"num_buckets must be >= 1, got {num_buckets}")
    lengths = _check_lengths(lengths, history.shape[0], history.device)
    return _lib.sdim_bucket_table(history, codes.to(torch.int64), lengths, num_buckets)


def sdim_gather(table: torch.Tensor, candidate_codes: torch.Tensor) -> torch.Tensor:
    """table [B,S,nb,d], candidate_codes [B,C,S] -> [B,C,d]; differentiable w.r.t. table."""
    _need(table.dim() == 4, f"table must be [B,S,nb,d], got {tuple(table.shape)}")
    _need(candidate_codes.dim() == 3 and candidate_codes.shape[0] == table.shape[0]
          and candidate_codes.shape[2] == table.shape[1],
          f"candidate_codes must be [B,C,S] matching table {tuple(table.shape)}, got {tuple(candidate_codes.shape)}")
    _need(not candidate_codes.is_floating_point(), f"candidate_codes must be integer, got {candidate_codes.dtype}")
    return _lib.sdim_gather(table, candidate_codes.to(torch.int64))


def topk_target_search(queries: torch.Tensor, keys: torch.Tensor, lengths: torch.Tensor,
                       k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """queries [B,C,da], keys [B,L,da] + lengths [B] -> (scores [B,C,k] float32, indices [B,C,k]
    int64); ties -> smaller index; empty slots (-inf, -1). No gradient (inputs are detached)."""
    _need(queries.dim() == 3, f"queries must be [B,C,da], got {tuple(queries.shape)}")
    _need(keys.dim() == 3 and keys.shape[0] == queries.shape[0] and keys.shape[2] == queries.shape[2],
          f"keys must be [B,L,da] matching queries {tuple(queries.shape)}, got {tuple(keys.shape)}")
    _need(k >= 1, f"k must be >= 1, got {k}")
    lengths = _check_lengths(lengths, queries.shape[0], queries.device)
    return _lib.topk_target_search(queries.detach(), keys.detach(), lengths, k)


def topk_aggregate(scores: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """scores/indices [B,C,k], values [B,L,dr] -> softmax-weighted sum [B,C,dr];
    differentiable w.r.t. scores and values."""
    _need(scores.dim() == 3 and scores.shape == indices.shape,
          f"scores and indices must both be [B,C,k], got {tuple(scores.shape)}, {tuple(indices.shape)}")
    _need(values.dim() == 3 and values.shape[0] == scores.shape[0],
          f"values must be [B,L,dr] with B={scores.shape[0]}, got {tuple(values.shape)}")
    _need(scores.is_floating_point(), f"scores must be floating point, got {scores.dtype}")
    return _lib.topk_aggregate(scores, indices.to(torch.int64), values)
