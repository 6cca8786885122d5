"""faiss retrieval: exact index == brute-force torch top-k; approximate kinds find most of it;
recommendations exclude seen items and map back to raw ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.retrieval import IndexConfig, build_index, load_index, save_index, search


def _emb(n: int = 500, d: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n + 1, d, generator=g)
    e[0] = 0
    return e


def test_exact_index_equals_bruteforce_topk(tmp_path: Path) -> None:
    emb = _emb()
    q = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    index = build_index(emb)
    save_index(index, tmp_path / "i.faiss")
    scores, ids = search(load_index(tmp_path / "i.faiss"), q, 10)
    brute = torch.topk(q @ emb[1:].T, 10, dim=1)
    assert np.array_equal(ids, (brute.indices + 1).numpy())
    assert np.allclose(scores, brute.values.numpy(), atol=1e-4)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_recall(kind: str) -> None:
    emb = _emb(2000)
    q = torch.randn(20, 16, generator=torch.Generator().manual_seed(2))
    cfg = IndexConfig(kind=kind, ivf_nlist=16, ivf_nprobe=8)
    _, ids = search(build_index(emb, cfg), q, 10)
    truth = (torch.topk(q @ emb[1:].T, 10, dim=1).indices + 1).numpy()
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)])
    assert recall >= 0.8, recall


def test_padding_row_never_returned() -> None:
    emb = _emb(5)
    emb[0] = 100.0  # would win every query if it were indexed
    _, ids = search(build_index(emb), torch.ones(1, 16), 5)
    assert sorted(ids[0].tolist()) == [1, 2, 3, 4, 5]


def test_empty_table_rejected() -> None:
    with pytest.raises(ValueError, match="no items"):
        build_index(torch.zeros(1, 4))
