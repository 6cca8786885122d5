"""The contract between the generic training loop (recsys/train.py) and a task.

A task owns its data (built from a `recsys data build` directory), makes batches vectorised in
torch/numpy, computes the loss of a model on a batch and validates a model. The loop owns
optimisation, clipping, early stopping, checkpoints/resume, progress and logging, and is called
unchanged from a Ray Train worker (pipelines/train_job.py), which passes the worker's shard.
Both tasks (recsys/tasks/next_item.py, recsys/tasks/ctr.py) implement the whole protocol, so the
loop calls it without inspecting signatures.
"""

from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

import torch

Batch = dict[str, torch.Tensor]


@runtime_checkable
class TrainTask(Protocol):
    #: validation metric used for early stopping and checkpoint selection (higher is better),
    #: e.g. "ndcg@10" (next-item, full ranking) or "auc" (CTR)
    primary_metric: str

    def num_train_batches(self, batch_size: int) -> int:
        """Batches per epoch for this worker's shard."""
        ...

    def train_batches(self, epoch: int, batch_size: int, generator: torch.Generator,
                      bucket_by_length: bool = False) -> Iterator[Batch]:
        """One epoch of training batches; all randomness (shuffling, negatives) comes from
        `generator`, so a resumed run replays the same batches. `bucket_by_length`
        (train.bucket_by_length) batches samples of similar length together (less padding)."""
        ...

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss to minimise and a dict of extra scalars to log."""
        ...

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        """Metrics on "valid" or "test" (model in eval mode, no grad)."""
        ...

    def metric_names(self) -> list[str]:
        """The validation metrics `evaluate` returns that may select weights (higher is better)."""
        ...
