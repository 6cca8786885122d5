"""What a sharded task needs from the other workers: sums and concatenations of small arrays.

A task built for `(rank, world_size)` holds only its parts of the build (recsys/data/layout.py
`worker_parts`), so every statistic that spans all users (next-item: the mean train positions, the
train item frequencies, the fixed validation sample; both tasks: the validation and test metrics)
is combined over the workers here. Everything exchanged is O(items) or O(evaluated samples), never
O(events). With `world_size == 1` every function is the identity, so the in-process path does the
same arithmetic without a process group. With `world_size > 1` the torch.distributed process group
(gloo on CPU, set up by Ray Train) must be initialised, and every rank must make the same calls in
the same order (they are collectives).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recsys.data import layout


def check(world_size: int) -> bool:
    """True when the calls below talk to other workers; an error when they would have to but no
    process group is up (a task of one shard would otherwise report one shard's statistics)."""
    if world_size <= 1:
        return False
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError(f"world_size={world_size}: a sharded task combines statistics and metrics over the "
                           "workers, so torch.distributed must be initialised first (Ray Train does this)")
    if torch.distributed.get_world_size() != world_size:
        raise RuntimeError(f"world_size={world_size} but the process group has {torch.distributed.get_world_size()} ranks")
    return True


def all_sum(values: np.ndarray, world_size: int) -> np.ndarray:
    """Element-wise sum over the workers (float64 or int64, same shape on every rank)."""
    values = np.asarray(values)
    if not check(world_size):
        return values
    t = torch.from_numpy(np.ascontiguousarray(values))
    torch.distributed.all_reduce(t)
    return t.numpy()


def all_concat(values: np.ndarray, world_size: int) -> np.ndarray:
    """The workers' 1-d arrays (any lengths, one dtype) concatenated in rank order, on every rank."""
    values = np.ascontiguousarray(values)
    if values.ndim != 1:
        raise ValueError(f"all_concat takes 1-d arrays, got shape {values.shape}")
    if not check(world_size):
        return values
    sizes = torch.zeros(world_size, dtype=torch.int64)
    sizes[torch.distributed.get_rank()] = values.size
    torch.distributed.all_reduce(sizes)
    width = int(sizes.max())
    padded = torch.zeros(width, dtype=torch.from_numpy(values[:0]).dtype)
    padded[: values.size] = torch.from_numpy(values)
    out = [torch.empty_like(padded) for _ in range(world_size)]
    torch.distributed.all_gather(out, padded)
    return np.concatenate([o[: int(n)].numpy() for o, n in zip(out, sizes)])


def shard_parts(build_dir: str | Path, rank: int, world_size: int) -> list[int]:
    """The build parts worker `rank` of `world_size` reads (layout.worker_parts), with an error
    naming the fix when the build has fewer parts than workers (a worker without data)."""
    count = layout.num_parts(build_dir)
    if not 0 <= rank < world_size:
        raise ValueError(f"shard: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if world_size > count:
        raise ValueError(f"{build_dir}: {count} parts for {world_size} workers; every worker reads whole parts, so "
                         f"rebuild with at least {world_size} parts or train with fewer workers")
    return layout.worker_parts(rank, world_size, count)
