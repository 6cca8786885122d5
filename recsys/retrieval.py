"""Item retrieval for next-item models: a faiss index over the learned item embeddings, saved
with the model (index.faiss), and top-k recommendation from the user embedding.

Index kinds (`IndexConfig.kind`):
    flat  exact maximum inner product (faiss.IndexFlatIP), the default
    hnsw  approximate, faiss.IndexHNSWFlat with METRIC_INNER_PRODUCT (M = hnsw_m)
    ivf   approximate, faiss.IndexIVFFlat with METRIC_INNER_PRODUCT (nlist, nprobe)
Index row r holds dense item id r + 1 (row 0 of the embedding table is padding, never indexed).

On a GPU machine (`device="cuda"`): the faiss index is moved to the GPU with
`faiss.index_cpu_to_all_gpus` when the faiss GPU build loads there (faiss.get_num_gpus() > 0;
its wheels need the CUDA 12 runtime libraries); otherwise exact search falls back to a torch
matmul + top-k on the GPU (same result as the flat index). This machine has faiss-cpu only.

faiss is imported when an index is built, loaded or searched, not with this module: CTR runs and
the CTR server import `IndexConfig` (through recsys.experiment) without loading faiss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import Field

from recsys.config import StrictModel

if TYPE_CHECKING:
    import faiss


class IndexConfig(StrictModel):
    kind: Literal["flat", "hnsw", "ivf"] = "flat"
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_search: int = Field(128, ge=1)
    ivf_nlist: int = Field(64, ge=1)
    ivf_nprobe: int = Field(8, ge=1)


def build_index(item_embeddings: torch.Tensor | np.ndarray, cfg: IndexConfig | None = None) -> faiss.Index:
    """item_embeddings [N+1, d] (row 0 = padding) -> faiss index over items 1..N."""
    import faiss

    cfg = cfg or IndexConfig()
    emb = item_embeddings.detach().float().cpu().numpy() if isinstance(item_embeddings, torch.Tensor) else item_embeddings
    x = np.ascontiguousarray(emb[1:], dtype=np.float32)  # [N, d]
    n, d = x.shape
    if n == 0:
        raise ValueError("item_embeddings has no items (only the padding row)")
    if cfg.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif cfg.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = cfg.hnsw_ef_search
    else:
        nlist = min(cfg.ivf_nlist, n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = min(cfg.ivf_nprobe, nlist)
    index.add(x)
    return index


def save_index(index: faiss.Index, path: str | Path) -> None:
    import faiss

    faiss.write_index(index, str(path))


def load_index(path: str | Path) -> faiss.Index:
    import faiss

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"faiss index not found: {path}")
    return faiss.read_index(str(path))


def search(index: faiss.Index, queries: torch.Tensor, k: int, *, device: str | torch.device = "cpu",
           item_embeddings: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """queries [B,d] -> (scores [B,k] float32, dense item ids [B,k] int64; -1 when fewer than k).

    On CUDA: faiss GPU index when available, else exact torch top-k over `item_embeddings`."""
    import faiss

    k = min(k, index.ntotal)
    device = torch.device(device)
    if device.type == "cuda" and faiss.get_num_gpus() == 0 and item_embeddings is not None:
        scores = queries.to(device) @ item_embeddings[1:].to(device).T  # [B,N]
        top = torch.topk(scores, k, dim=1)
        return top.values.float().cpu().numpy(), (top.indices + 1).cpu().numpy()
    if device.type == "cuda" and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
    scores, rows = index.search(q, k)
    return scores, np.where(rows >= 0, rows + 1, -1)


@dataclass
class Recommendation:
    item_ids: list[int]  # raw item ids
    scores: list[float]


class Recommender:
    """Top-k items for users of a trained next-item run (`recsys.experiment.load_run`)."""

    def __init__(self, run: Any, index: faiss.Index | None = None, device: str = "cpu") -> None:
        from recsys.artifacts import INDEX_FILE
        from recsys.data.sequences import JaggedSequences

        self.run = run
        self.device = device
        self.model = run.model.to(device).eval()
        self.index = index if index is not None else load_index(Path(run.run_dir) / INDEX_FILE)
        self.max_len = int(run.model.max_len)
        self.sequences = JaggedSequences.read(run.build_dir)
        self.row_of_user = self.sequences.row_of_user()

    def history(self, user: int) -> np.ndarray:
        """Dense item ids of a raw user id's whole known sequence (error when unknown)."""
        dense = int(self.run.vocabs["users"].encode(np.array([user]))[0])
        if dense == 0 or dense >= self.row_of_user.size or self.row_of_user[dense] < 0:
            raise KeyError(f"user {user} is not in this run's vocabulary / sequences")
        return self.sequences.user_items(int(self.row_of_user[dense]))

    @torch.no_grad()
    def recommend_history(self, history: np.ndarray, k: int = 10, exclude_seen: bool = True) -> Recommendation:
        """Top-k from a dense-id history (most recent last)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        items = np.zeros(self.max_len, dtype=np.int64)  # left-padded model input
        tail = np.asarray(history, dtype=np.int64)[-self.max_len:]
        if tail.size:
            items[-tail.size:] = tail
        user = self.model.user_embedding(torch.from_numpy(items)[None].to(self.device))  # [1,d]
        seen = set(np.asarray(history).tolist()) if exclude_seen else set()
        want = min(k + len(seen), self.index.ntotal)
        scores, ids = search(self.index, user, want, device=self.device,
                             item_embeddings=self.model.item_embeddings())
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i > 0 and int(i) not in seen][:k]
        raw = self.run.vocabs["items"].decode(np.array([p[0] for p in pairs], dtype=np.int64)) if pairs else []
        return Recommendation([int(r) for r in raw], [p[1] for p in pairs])

    def recommend(self, user: int, k: int = 10, exclude_seen: bool = True) -> Recommendation:
        return self.recommend_history(self.history(user), k, exclude_seen)


def recommend(run: Any, user: int, k: int = 10, exclude_seen: bool = True) -> Recommendation:
    """Top-k raw item ids + scores for raw user id `user` of a loaded run."""
    return Recommender(run).recommend(user, k, exclude_seen)
