"""Retrieval quality against planted truth (synthetic builds, docs/SYNTH.md): does a two-stage CTR
model's search stage (DARE, TWIN: `retrieval_indices(batch, k)`) find the history positions the
generator planted as relevant to each target?

Protocol: for every impression of `split` whose history window (the `max_history` most recent
behaviours the task feeds the model) holds at least one planted relevant position, the model's k
best history slots, best first, are mapped to positions of the full sequence (slot j of the
right-padded history is position `prefix_length - hist_length + j`) and scored against the relevant
positions inside the window: NDCG@k (binary gains, ideal = min(k, #relevant) hits at the top) and
recall@k = hits / min(k, #relevant). The mean over those impressions is reported with their count.
Used by the report (pipelines/report) and the planted benchmark (benchmarks/ctr_planted.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow.parquet as pq
import torch

from recsys.data.synth import PLANTED_TRUTH_FILE, RELEVANT_POSITIONS


class SearchStage(Protocol):
    def retrieval_indices(self, batch: dict[str, torch.Tensor], k: int | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class PlantedRetrieval:
    k: int
    ndcg: float
    recall: float
    #: impressions scored (those with >= 1 relevant position inside the history window)
    num_targets: int


def has_planted_truth(build_dir: str | Path) -> bool:
    return (Path(build_dir) / PLANTED_TRUTH_FILE).is_file()


def window_scores(slots: np.ndarray, start: int, relevant: np.ndarray, k: int) -> tuple[float, float] | None:
    """(NDCG@k, recall@k) of one impression: `slots` [k] history slots best first (-1 = none), the
    window's first full-sequence position `start`, all planted `relevant` positions; None when no
    relevant position lies inside the window."""
    rel = relevant[relevant >= start] - start  # as slots
    if rel.size == 0:
        return None
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    hit = np.isin(slots[:k], rel) & (slots[:k] >= 0)
    ideal = disc[: min(k, rel.size)].sum()
    return float((hit * disc[: hit.size]).sum() / ideal), float(hit.sum() / min(k, rel.size))


@torch.no_grad()
def planted_retrieval(task, model: SearchStage, build_dir: str | Path, split: str = "test", k: int = 20  # noqa: ANN001
                      ) -> PlantedRetrieval:
    """Mean NDCG@k / recall@k of `model`'s search on a CTR task's `split` (module doc). `task` is a
    recsys.tasks.ctr.CTRTask on the planted build `build_dir`."""
    truth = pq.read_table(Path(build_dir) / PLANTED_TRUTH_FILE, columns=[RELEVANT_POSITIONS])[RELEVANT_POSITIONS]
    relevant = truth.to_pylist()
    s = task.splits[split]
    ndcg, recall = [], []
    for sel, batch in task.eval_batches(split):
        slots = model.retrieval_indices(batch, k).cpu().numpy()  # [B,k]
        starts = s.prefix[sel] - batch["hist_lengths"].numpy()
        for b, i in enumerate(sel):
            got = window_scores(slots[b], int(starts[b]), np.asarray(relevant[s.index[i]], dtype=np.int64), k)
            if got is not None:
                ndcg.append(got[0])
                recall.append(got[1])
    n = len(ndcg)
    return PlantedRetrieval(k, float(np.mean(ndcg)) if n else float("nan"),
                            float(np.mean(recall)) if n else float("nan"), n)
