"""torchrec DistributedModelParallel on 2 CPU ranks (gloo): the planner shards an item table
row-wise (and table-wise), fbgemm's CPU kernels look rows up across ranks and update them in the
backward (fused EXACT_SGD), and a few training steps give the same losses and weights as data
parallelism (every rank holds the whole table, gradients averaged).

Tolerance: 1e-6 absolute on losses and weights (float32). The runs differ only in summation order:
a sharded row's gradient is summed over the ranks' lookups by fbgemm, the data-parallel one by the
autograd of each rank and an all-reduce (torchrec divides the gradients it sends to a row's owner
by the world size, so both average and use the same learning rate).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tests.recsys.tasks.shards import run_ranks

ITEMS, DIM, LR, STEPS, BATCH, HIST = 40, 8, 0.5, 5, 6, 4
TOL = 1e-6


class TwoTower(nn.Module):
    """score = <mean of the history's item vectors, target item vector> + a dense layer; items go
    through the project's ItemEmbedding (a torchrec EmbeddingCollection, looked up with a KJT)."""

    def __init__(self) -> None:
        super().__init__()
        from recsys.models.item_embedding import ItemEmbedding

        self.emb = ItemEmbedding(ITEMS + 1, DIM, backend="torchrec")
        self.dense = nn.Linear(DIM, DIM)

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        vecs = self.emb(ids)  # [B, HIST+1, d]: history then target, one sharded lookup
        user = self.dense(vecs[:, :HIST].mean(1))
        return F.binary_cross_entropy_with_logits((user * vecs[:, HIST]).sum(-1), labels)


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randint(1, ITEMS + 1, (BATCH, HIST + 1), generator=g), torch.randint(0, 2, (BATCH,), generator=g).float()


def _train(rank: int, world: int, mode: str, steps: int = STEPS) -> dict[str, Any]:
    """`steps` SGD steps on this rank's batches; returns the losses and the whole final table."""
    from pipelines.train_job import shard_embeddings

    torch.manual_seed(0)
    model = TwoTower()
    table0 = model.emb.weight.detach().clone()
    losses = []
    if mode == "data_parallel":
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        for step in range(steps):
            loss = model(*_batch(rank, step))
            opt.zero_grad()
            loss.backward()
            for p in model.parameters():  # the arithmetic of fit's gradient all-reduce
                torch.distributed.all_reduce(p.grad)
                p.grad /= world
            opt.step()
            losses.append(loss.item())
        return {"losses": losses, "table": model.emb.weight.detach().clone(), "table0": table0,
                "dense": {k: v.clone() for k, v in model.dense.state_dict().items()}}
    dmp = shard_embeddings(model, torch.device("cpu"), compute_device="cpu", sharding_type=mode,
                           embedding_optimizer=(torch.optim.SGD, {"lr": LR}))
    dense = [p for n, p in dmp.named_parameters() if "dense" in n]
    assert dense, [n for n, _ in dmp.named_parameters()]
    opt = torch.optim.SGD(dense, lr=LR)
    for step in range(steps):
        loss = dmp(*_batch(rank, step))
        opt.zero_grad()
        loss.backward()  # the table's rows are updated here (fused), dense gradients averaged (DDP)
        opt.step()
        losses.append(loss.item())
    table = torch.zeros(ITEMS + 1, DIM)
    kinds = set()
    for key, value in dmp.state_dict().items():
        if key.endswith("item_table.weight"):
            kinds.add(type(value).__name__)
            for shard in value.local_shards():
                (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                table[r0 : r0 + nr, c0 : c0 + nc] = shard.tensor
    torch.distributed.all_reduce(table)  # every row has exactly one owner
    state = dmp.state_dict()
    return {"losses": losses, "table": table, "kinds": kinds,
            "plan": str(dmp.plan), "dense": {k.rsplit("dense.", 1)[1]: v.clone() for k, v in state.items()
                                             if "dense." in k}}


def _train_all(rank: int, world: int) -> dict[str, dict[str, Any]]:
    """Data parallel, then row-wise and table-wise sharded, in one process group (one spawn: the
    torchrec import dominates the test's time)."""
    return {mode: _train(rank, world, mode) for mode in ("data_parallel", "row_wise", "table_wise")}


def test_sharded_table_trains_like_data_parallel() -> None:
    runs = run_ranks(_train_all)
    reference = [r["data_parallel"] for r in runs]
    moved = (reference[0]["table"] - reference[0]["table0"]).abs().max()
    assert moved > 1e-3  # the steps really trained the table
    for sharding in ("row_wise", "table_wise"):
        sharded = [r[sharding] for r in runs]
        assert all(s["kinds"] == {"ShardedTensor"} for s in sharded)
        assert sharding in sharded[0]["plan"]
        for ref, got in zip(reference, sharded):
            assert max(abs(a - b) for a, b in zip(ref["losses"], got["losses"])) <= TOL, (sharding, ref, got)
            assert torch.allclose(ref["table"], got["table"], atol=TOL, rtol=0), sharding
            assert ref["dense"].keys() == got["dense"].keys()
            assert all(torch.allclose(ref["dense"][k], got["dense"][k], atol=TOL, rtol=0) for k in ref["dense"])
