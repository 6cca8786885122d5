"""Real (freshly initialised, seeded) small models for the serving tests - no fakes: scores come
from the actual SDIM/DARE/SASRec code. Raw ids are offset so raw != dense is exercised."""

from __future__ import annotations

import numpy as np
import torch

from recsys.data.vocab import Vocabulary
from recsys.models.registry import build_model, parse_model_config
from serving.models import CTRScorer, ModelInfo, Retriever

NUM_ITEMS, NUM_CATS = 60, 6
RAW_ITEMS = np.arange(1, NUM_ITEMS + 1, dtype=np.int64) * 10 + 1000  # 1010, 1020, ...
RAW_CATS = np.arange(1, NUM_CATS + 1, dtype=np.int64) + 500
RAW_USERS = np.arange(1, 21, dtype=np.int64) + 7000


def vocabs() -> dict[str, Vocabulary]:
    return {"users": Vocabulary(RAW_USERS), "items": Vocabulary(RAW_ITEMS), "categories": Vocabulary(RAW_CATS)}


def item_cats() -> np.ndarray:
    out = np.zeros(NUM_ITEMS + 1, dtype=np.int64)
    out[1:] = (np.arange(NUM_ITEMS) % NUM_CATS) + 1
    return out


SMALL = {
    "sdim": {"name": "sdim", "item_dim": 8, "cat_dim": 4, "num_hashes": 12, "tau": 3, "short_len": 4, "attention_dim": 8, "head_hidden": [16]},
    "dare": {"name": "dare", "item_dim": 8, "cat_dim": 4, "pos_dim": 4, "top_k": 4, "head_hidden": [16]},
}


def ctr_scorer(name: str = "sdim", seed: int = 0, max_history: int = 10_000, version: str | None = None,
               init_std: float | None = None) -> CTRScorer:
    """`init_std` above the 0.01 default spreads the untrained model's scores (so a test can tell
    two histories apart by their scores)."""
    torch.manual_seed(seed)
    cfg = dict(SMALL[name]) if init_std is None else {**SMALL[name], "init_std": init_std}
    model = build_model(parse_model_config(cfg), NUM_ITEMS, NUM_CATS).eval()
    info = ModelInfo(name=name, version=version or f"seed{seed}", directory="<in-memory>")
    return CTRScorer(model, vocabs(), info, item_cats(), max_history)


def retriever(seed: int = 0) -> Retriever:
    import faiss

    torch.manual_seed(seed)
    cfg = parse_model_config({"name": "sasrec", "dim": 8, "num_blocks": 1, "max_len": 10, "dropout": 0.0})
    model = build_model(cfg, NUM_ITEMS).eval()
    with torch.inference_mode():
        emb = model.item_embeddings().float().numpy()
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(np.ascontiguousarray(emb[1:]))
    return Retriever(model, vocabs(), ModelInfo("sasrec", f"seed{seed}", "<in-memory>"), index, ids_are_rows=True)
