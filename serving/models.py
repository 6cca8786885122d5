"""Loaded models as the service uses them: raw ids in, scores out.

`CTRScorer` wraps a CTR run directory (din/twin/dare/sdim): it maps raw ids through the model's
own vocabularies and exposes the serving split of docs/INTERFACES.md (encode_user /
append_to_state / score_candidates). `Retriever` wraps a next-item run directory (sasrec/mqsa_ted)
and its faiss index. Both are loaded with safetensors and faiss' own format: no pickle anywhere.

Raw ids unknown to a model's vocabulary:
- in a user's history they are skipped (the event stays in the durable log; a model trained on a
  newer build will use it);
- as candidates they are not scored (`null` score) and are listed in `unknown_items`: the padding
  row (dense id 0) is not a trained item and a score for it would be meaningless.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from kernels.warmup import length_buckets
from recsys.artifacts import INDEX_FILE
from recsys.data import layout, schema
from serving.loading import ModelInfo, load_checked_run, serving_max_history, trained_max_history
from serving.store.base import History

__all__ = ["CTRScorer", "ModelInfo", "Retriever", "State", "clone_state", "state_from_bytes", "state_to_bytes"]

State = dict[str, torch.Tensor]
#: [K] int64 store version at which each known history item of a state was appended (its event's
#: position in the user's log, store/base.py); states saved before this name carry
#: "serving.event_seqs" instead and are re-encoded (serving/state.py)
VERSIONS_KEY = "serving.event_versions"


def item_category_map(build_dir: Path | None, num_items: int) -> np.ndarray:
    """dense item id -> dense category id (0 = none), from the build's sequences (the
    category an item was last seen with); zeros when the build has no categories or is absent."""
    out = np.zeros(num_items + 1, dtype=np.int64)
    if build_dir is None:
        return out
    if not (Path(build_dir) / schema.MANIFEST_FILE).is_file():
        return out
    import pyarrow.parquet as pq

    files = layout.table_files(build_dir, layout.SEQUENCES)
    if schema.SEQ_CATEGORIES not in pq.read_schema(str(files[0])).names:
        return out
    for _, t in layout.iter_parts(build_dir, layout.SEQUENCES, columns=[schema.SEQ_ITEMS, schema.SEQ_CATEGORIES]):
        items = t[schema.SEQ_ITEMS].combine_chunks().flatten().to_numpy()
        cats = t[schema.SEQ_CATEGORIES].combine_chunks().flatten().to_numpy()
        ok = (items > 0) & (items <= num_items)
        out[items[ok]] = cats[ok]
    return out


MAX_LOOKUP_TABLE = 1 << 23  # raw ids below this get a direct raw -> dense table (int32, <= 32 MiB)


def dense_lookup_table(raw_ids: np.ndarray) -> np.ndarray | None:
    """int32 table t with t[raw] = dense id (1..N) and 0 elsewhere, when every raw id is in
    [0, MAX_LOOKUP_TABLE); None otherwise (callers fall back to Vocabulary.encode)."""
    raw_ids = np.asarray(raw_ids, dtype=np.int64)
    if raw_ids.size == 0 or raw_ids.min() < 0 or raw_ids.max() >= MAX_LOOKUP_TABLE:
        return None
    lut = np.zeros(int(raw_ids.max()) + 1, dtype=np.int32)
    lut[raw_ids] = np.arange(1, raw_ids.size + 1, dtype=np.int32)
    return lut


def resolve_device(device: str) -> torch.device:
    """The torch device to serve on; a CUDA device without a usable GPU is refused by name."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but torch.cuda.is_available() is False on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device: {device!r} does not exist ({torch.cuda.device_count()} CUDA device(s) visible)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: {device!r} is not supported (cpu or cuda[:N])")
    return dev


class CTRScorer:
    """A CTR model ready to serve. Thread-compatible: scoring runs under torch.inference_mode.

    On `device` (cpu or cuda) live the model and each user's model state (bucket tables, attention
    keys: what scoring reads); the states' event-version bookkeeping, ids and the returned scores
    stay on the CPU. On CUDA the retrieval-stage ops run as the Triton kernels (kernels.ops dispatch)."""

    def __init__(self, model: torch.nn.Module, vocabs: dict, info: ModelInfo, item_cats: np.ndarray, max_history: int,
                 device: str = "cpu", trained_max_history: int | None = None) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.vocabs = vocabs
        self.info = info
        self.item_cats = item_cats  # [N+1] dense item -> dense category
        self.max_history = max_history  # the history window served (events)
        self.trained_max_history = trained_max_history  # the CTR history cap of training (None: unknown)
        self.num_items = len(vocabs["items"])
        self._item_lut = dense_lookup_table(vocabs["items"].raw_ids)

    @classmethod
    def load(cls, run_dir: str | Path, max_history: int | None = None, device: str = "cpu",
             above_trained: Literal["refuse", "warn"] = "refuse") -> "CTRScorer":
        """A CTR run directory (serving/loading.py's manifest rule). `max_history` None serves the
        history cap the model was trained with; above it, `above_trained` refuses or warns."""
        resolve_device(device)  # refuse an unusable device before loading anything
        loaded, info = load_checked_run(run_dir, "ctr")
        trained = trained_max_history(loaded.config)
        window = serving_max_history(max_history, trained, above_trained)
        vocabs = loaded.vocabs
        cats = item_category_map(loaded.build_dir, len(vocabs["items"]))
        return cls(loaded.model, vocabs, info, cats, window, device, trained)

    @property
    def key(self) -> str:
        """Identifies states computed by this model (cache and store key)."""
        return f"{self.info.name}-{self.info.version}"

    # -- ids --------------------------------------------------------------------------------
    def encode_items(self, raw: np.ndarray) -> np.ndarray:
        """Dense item ids (0 = unknown): one array lookup when the raw ids are small enough for a
        table, else the vocabulary's binary search (the same mapping, tested)."""
        raw = np.asarray(raw, dtype=np.int64)
        lut = self._item_lut
        if lut is None:
            return self.vocabs["items"].encode(raw)
        inside = (raw >= 0) & (raw < lut.size)
        return np.where(inside, lut[np.where(inside, raw, 0)], 0).astype(np.int64)

    def encode_categories(self, raw: np.ndarray, dense_items: np.ndarray) -> np.ndarray:
        """Dense categories: the raw category mapped through the vocabulary when given (>= 0),
        else the item's category from the build."""
        raw = np.asarray(raw, dtype=np.int64)
        from_item = self.item_cats[np.clip(dense_items, 0, self.num_items)]
        if "categories" not in self.vocabs:
            return np.zeros_like(from_item)
        given = self.vocabs["categories"].encode(np.where(raw >= 0, raw, 0))
        return np.where((raw >= 0) & (given > 0), given, from_item)

    def _dense_history(self, h: History) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Known items, their categories and their event versions (the log holds versions
        h.version-len+1..h.version)."""
        items = self.encode_items(h.items)
        keep = items > 0  # unknown history items are skipped (see module docstring)
        cats = self.encode_categories(h.categories, items)
        versions = np.arange(h.version - len(h) + 1, h.version + 1, dtype=np.int64)
        dev = self.device
        return torch.from_numpy(items[keep]).to(dev), torch.from_numpy(cats[keep]).to(dev), torch.from_numpy(versions[keep])

    def _on_device(self) -> contextlib.AbstractContextManager:
        """Make the serving GPU the thread's current device (Triton launches on the current device,
        and worker threads / the event loop default to cuda:0); nothing on the CPU."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def to_device(self, state: State) -> State:
        """The state with its model tensors on the serving device: states read back from the store
        are CPU tensors, and the state cache moves them once, when it loads them (encode/append
        produce states on the device already); the event-version bookkeeping stays on the CPU. A no-op
        on the CPU."""
        if self.device.type == "cpu":
            return state
        return {k: (v if k == VERSIONS_KEY else v.to(self.device, non_blocking=True)) for k, v in state.items()}

    # -- serving split ----------------------------------------------------------------------
    # The state of a user at store version t reflects the known items among the last `max_history`
    # stored EVENTS (versions t-max_history+1..t), whatever their mix of known and unknown items. So
    # the state also carries the event version of each known item it holds (VERSIONS_KEY): an append
    # evicts exactly the known items whose events left that window, as a fresh encode would.
    def encode(self, h: History) -> State:
        items, cats, versions = self._dense_history(h)
        with torch.inference_mode(), self._on_device():
            state = self.model.encode_user(items, cats)
        state[VERSIONS_KEY] = versions
        return state

    def append(self, state: State, tail: History, window: int | None = None) -> State:
        """The state after the events of `tail` (versions tail.version-len+1..tail.version, following
        the state's): known items appended, and known items whose events are no longer among the last
        `window` (default max_history) events evicted."""
        if VERSIONS_KEY not in state:
            raise ValueError(f"state: no {VERSIONS_KEY!r} entry (a state from an older server version; re-encode it)")
        window = self.max_history if window is None else window
        items, cats, versions = self._dense_history(tail)
        all_versions = torch.cat([state[VERSIONS_KEY], versions])
        kept = all_versions[all_versions > tail.version - window]  # known items still inside the event window
        if kept.numel() == 0:  # every known item left the window
            return self.encode(History.empty())
        if items.numel() == 0 and kept.numel() == state[VERSIONS_KEY].numel():
            return state  # nothing known arrived and nothing known left the window
        with torch.inference_mode(), self._on_device():
            out = self.model.append_to_state(state, items, cats, int(kept.numel()))
        out[VERSIONS_KEY] = kept
        return out

    def warm_up(self, every_length: bool | None = None, max_candidates: int = 1) -> None:
        """One encode + score on an empty history: triggers the lazy imports and one-time set-up of
        the scoring path (torch dispatch, kernels) before serving, so they neither slow the first
        request nor land outside the start-up gc.freeze().

        `every_length` (default: on CUDA) also encodes one history per length bucket up to
        `max_history` and scores 1 and `max_candidates` candidates on it: the Triton kernels do not
        autotune and their compiled variants depend only on the length bucket and the candidate
        count (kernels/warmup.py), so after this no request compiles a kernel."""
        if self.num_items == 0:
            return
        self.score(self.encode(History.empty()), np.ones(1, dtype=np.int64))
        if not (self.device.type == "cuda" if every_length is None else every_length):
            return
        for n in length_buckets(self.max_history):
            dense = 1 + np.arange(n, dtype=np.int64) % self.num_items
            h = History(self.vocabs["items"].decode(dense), np.full(n, -1, dtype=np.int64), np.arange(n, dtype=np.int64), n)
            state = self.encode(h)
            for c in sorted({1, max_candidates}):
                self.score(state, 1 + np.arange(c, dtype=np.int64) % self.num_items)

    def score(self, state: State, cand_dense: np.ndarray, cand_cats_raw: np.ndarray | None = None) -> np.ndarray:
        """Click probabilities of known (dense > 0) candidates; [C] float64."""
        raw_cats = np.full(cand_dense.shape, -1, dtype=np.int64) if cand_cats_raw is None else cand_cats_raw
        cats = self.encode_categories(raw_cats, cand_dense)
        dev = self.device
        with torch.inference_mode(), self._on_device():
            logits = self.model.score_candidates(state, torch.from_numpy(cand_dense).to(dev),
                                                 torch.from_numpy(cats).to(dev))
        return torch.sigmoid(logits.float()).cpu().numpy().astype(np.float64)


    def score_many(self, jobs: list[tuple[State, np.ndarray, np.ndarray | None]]) -> list[np.ndarray]:
        """Click probabilities [C_b] (NaN for dense id 0) for several (state, dense candidates, raw
        candidate categories or None) at once: one batched model call (`score_candidates_batch`)
        over the users' jagged histories when the model has one and two or more users have known
        candidates; else one `score` per user. Equal to `score` per user (tested)."""
        out = [np.full(dense.shape, np.nan) for _, dense, _ in jobs]
        live = [k for k, (_, dense, _) in enumerate(jobs) if (dense > 0).any()]
        batched = getattr(self.model, "score_candidates_batch", None)
        if batched is None or len(live) < 2:
            for k in live:
                state, dense, cats = jobs[k]
                known = dense > 0
                out[k][known] = self.score(state, dense[known], None if cats is None else cats[known])
            return out
        dev, ids, cats_dense = self.device, [], []
        for k in live:
            _, dense, raw_cats = jobs[k]
            known = dense > 0
            raw = np.full(int(known.sum()), -1, dtype=np.int64) if raw_cats is None else raw_cats[known]
            ids.append(torch.from_numpy(dense[known]).to(dev))
            cats_dense.append(torch.from_numpy(self.encode_categories(raw, dense[known])).to(dev))
        with torch.inference_mode(), self._on_device():
            logits = batched([jobs[k][0] for k in live], ids, cats_dense)
        for k, lg in zip(live, logits):
            out[k][jobs[k][1] > 0] = torch.sigmoid(lg.float()).cpu().numpy().astype(np.float64)
        return out


def clone_state(state: State) -> State:
    return {k: v.clone() for k, v in state.items()}


def state_to_bytes(state: State) -> bytes:
    """safetensors bytes of a state (always written from CPU copies, so any server can read them)."""
    return st_save({k: v.detach().cpu().contiguous() for k, v in state.items()})


def state_from_bytes(data: bytes) -> State:
    return st_load(data)


class Retriever:
    """Next-item model + faiss inner-product index over its item embeddings."""

    def __init__(self, model: torch.nn.Module, vocabs: dict, info: ModelInfo, index: Any, ids_are_rows: bool) -> None:
        self.model = model
        self.vocabs = vocabs
        self.info = info
        self.index = index
        self.ids_are_rows = ids_are_rows  # True: faiss id r is item row r+1 (index over rows 1..N)
        self.max_len = int(getattr(model, "max_len", 50))

    @classmethod
    def load(cls, run_dir: str | Path) -> "Retriever":
        import faiss

        loaded, info = load_checked_run(run_dir, "next_item")
        path = Path(run_dir) / INDEX_FILE
        with torch.inference_mode():
            emb = loaded.model.item_embeddings().float().numpy()  # [N+1, d]
        if path.is_file():
            index = faiss.read_index(str(path))
            if index.d != emb.shape[1]:
                raise ValueError(f"model_dir: {path} has dimension {index.d}, model embeddings have {emb.shape[1]}")
            ids_are_rows = index.ntotal == emb.shape[0] - 1 and not hasattr(index, "id_map")
        else:  # exact inner product over rows 1..N
            index = faiss.IndexFlatIP(emb.shape[1])
            index.add(np.ascontiguousarray(emb[1:]))
            ids_are_rows = True
        return cls(loaded.model, loaded.vocabs, info, index, ids_are_rows)

    def candidates(self, h: History, n: int, exclude: set[int]) -> tuple[np.ndarray, np.ndarray]:
        """Up to `n` (raw item ids, inner-product scores) for a history, excluding raw ids in `exclude`."""
        dense = self.vocabs["items"].encode(h.items)
        dense = dense[dense > 0][-self.max_len :]
        if dense.size == 0:
            raise LookupError("user_id: no history known to the retrieval model (cold start)")
        items = torch.from_numpy(dense)[None, :]  # [1, n] most recent last (no padding needed)
        with torch.inference_mode():
            q = self.model.user_embedding(items).float().numpy()  # [1, d]
        want = min(self.index.ntotal, n + len(exclude))
        scores, ids = self.index.search(np.ascontiguousarray(q), want)
        ids, scores = ids[0], scores[0]
        ok = ids >= 0
        ids, scores = ids[ok], scores[ok]
        dense_ids = ids + 1 if self.ids_are_rows else ids
        valid = (dense_ids >= 1) & (dense_ids <= len(self.vocabs["items"]))
        raw = self.vocabs["items"].decode(dense_ids[valid])
        scores = scores[valid]
        keep = np.array([r not in exclude for r in raw.tolist()], dtype=bool) if exclude else np.ones(raw.size, bool)
        return raw[keep][:n], scores[keep][:n]
