"""TED's teacher: the directed item->item transition graph and the KD loss (docs/MODELS.md, MQSA-TED).

A[i, j] = number of times item j follows item i exactly k steps later (k = 1..time_span), counted
on the TRAINING part of each sequence truncated to its last max_len items. Stored as CSR arrays
over rows 0..N (row 0 = padding, empty): `indptr` [N+2], `indices` [nnz] (item ids 1..N, sorted
per row), `counts` [nnz]. Never a dense |I|x|I| matrix.

Teacher of item i: p_i = softmax(z_i) over items 1..N with z_i[j] = A[i,j] / max_j A[i,j] / τ
(z = 0 off the row's support; a row with no successor gives the uniform teacher).
Because z is 0 except on the support S_i, the KD cross-entropy has a closed form that needs only
the support:  -Σ_j p_j log q_j = logsumexp(s) - Σ_j p_j s_j  and
Σ_j p_j s_j = [Σ_{j∈S} (e^{z_j} - 1) s_j + Σ_all s_j] / Z,  Z = Σ_{j∈S} e^{z_j} + (N - |S|),
computed with a shift by max z for stability. Σ_all s_j = u·(Σ_j E_j)/τ costs one dot product.

Speed (the KD loss is MQSA-TED's most expensive part, on the [R, N] student logits): p_i depends
only on item i, so the support weights w = (e^z - 1)/Z and the off-support probability 1/Z are
computed ONCE per (graph, τ) (`teacher_weights`); per step Σ_j p_j s_j = (u/τ)·t_i with the
teacher-expected item embedding t_i = Σ_j p_ij E_j = base_i·Σ_j E_j + Σ_{j∈S_i} w_ij E_j, formed
once per DISTINCT item of the batch (a [P, d] gather, no indexing into the [R, N] logits); u is
divided by τ before the [R, d] x [d, N] product, and logsumexp comes from the fused cross-entropy
kernel (lse = CE(s, 0) + s_0). Same value as the dense definition (tests/recsys/models/test_transitions.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from recsys.data.sequences import JaggedSequences


@dataclass(frozen=True)
class TransitionGraph:
    num_items: int
    indptr: torch.Tensor  # [N+2] int64, rows 0..N
    indices: torch.Tensor  # [nnz] int64, successor item ids (1..N), sorted within a row
    counts: torch.Tensor  # [nnz] float32

    @property
    def nnz(self) -> int:
        return int(self.indices.numel())

    @classmethod
    def from_sequences(cls, sequences: JaggedSequences, train_ends: np.ndarray, max_len: int,
                       time_span: int = 1, num_items: int | None = None) -> "TransitionGraph":
        """Count transitions on items[offsets[r] + max(0, e_r - max_len) : offsets[r] + e_r] per row r,
        where e_r = train_ends[r] is the exclusive end of row r's training part (vectorised)."""
        if num_items is None:
            raise ValueError("num_items is required (number of real items; ids are 1..num_items)")
        train_ends = np.asarray(train_ends, dtype=np.int64)
        lengths = sequences.lengths
        if train_ends.shape != (sequences.num_users,):
            raise ValueError(f"train_ends must have shape ({sequences.num_users},), got {train_ends.shape}")
        if (train_ends < 0).any() or (train_ends > lengths).any():
            bad = int(np.flatnonzero((train_ends < 0) | (train_ends > lengths))[0])
            raise ValueError(f"train_ends[{bad}]={train_ends[bad]} outside [0, {lengths[bad]}] (row length)")
        if max_len < 1 or time_span < 1:
            raise ValueError(f"max_len and time_span must be >= 1, got {max_len}, {time_span}")
        starts = sequences.offsets[:-1] + np.maximum(train_ends - max_len, 0)  # [U] global
        ends = sequences.offsets[:-1] + train_ends  # [U] global, exclusive
        span = ends - starts
        # global positions of every kept item, and the global end of its row
        row = np.repeat(np.arange(sequences.num_users), span)
        local = np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span)
        gpos = starts[row] + local
        kept = sequences.items[gpos]
        if kept.size and (kept.min() < 1 or kept.max() > num_items):
            raise ValueError(f"sequence items must be in 1..{num_items} (num_items), found {kept.min()}..{kept.max()}")
        src_l, dst_l = [], []
        for k in range(1, time_span + 1):
            ok = gpos + k < ends[row]
            src_l.append(sequences.items[gpos[ok]])
            dst_l.append(sequences.items[gpos[ok] + k])
        src = np.concatenate(src_l) if src_l else np.zeros(0, np.int64)
        dst = np.concatenate(dst_l) if dst_l else np.zeros(0, np.int64)
        key, cnt = np.unique(src * (num_items + 1) + dst, return_counts=True)  # sorted by (src, dst)
        rows, cols = key // (num_items + 1), key % (num_items + 1)
        indptr = np.zeros(num_items + 2, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=num_items + 1), out=indptr[1:])
        return cls(num_items, torch.from_numpy(indptr), torch.from_numpy(cols.astype(np.int64)),
                   torch.from_numpy(cnt.astype(np.float32)))

    def to(self, device: torch.device | str) -> "TransitionGraph":
        return TransitionGraph(self.num_items, self.indptr.to(device), self.indices.to(device), self.counts.to(device))

    def row_positions(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """items [R] -> (row [P], flat [P]): positions `flat` in indices/counts of the nonzeros of
        A[items[r], :], with r = row (vectorised CSR row gather)."""
        items = items.to(self.indptr.device)
        start, stop = self.indptr[items], self.indptr[items + 1]  # [R]
        deg = stop - start
        row = torch.repeat_interleave(torch.arange(items.numel(), device=items.device), deg)  # [P]
        first = torch.cumsum(deg, 0) - deg
        flat = start[row] + torch.arange(row.numel(), device=items.device) - first[row]  # [P]
        return row, flat

    def gather_rows(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """items [R] -> (row [P], col [P], count [P]): the nonzeros of A[items[r], :] as (r, j, A) triples."""
        row, flat = self.row_positions(items)
        return row, self.indices[flat], self.counts[flat]

    def teacher_logits_sparse(self, items: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, col, z): the teacher logits z = A / rowmax(A) / τ on the support of each row."""
        row, col, cnt = self.gather_rows(items)
        rowmax = torch.zeros(items.numel(), dtype=cnt.dtype, device=cnt.device).scatter_reduce(
            0, row, cnt, reduce="amax", include_self=True)
        return row, col, cnt / rowmax[row] / tau

    def teacher_probs(self, items: torch.Tensor, tau: float) -> torch.Tensor:
        """Dense teacher rows [R, N] over items 1..N (column j-1 = item j). For tests and small R only."""
        row, col, z = self.teacher_logits_sparse(items, tau)
        logits = torch.zeros(items.numel(), self.num_items, dtype=torch.float64, device=z.device)
        logits[row, col - 1] = z.double()
        return torch.softmax(logits, dim=1)


@dataclass(frozen=True)
class TeacherWeights:
    """Teacher rows of every item for one τ: p_i[j] = base[i] + w[k] for j = indices[k] in row i's
    CSR range (the support), p_i[j] = base[i] elsewhere. Shares the graph's indptr/indices."""

    graph: TransitionGraph
    tau: float
    w: torch.Tensor  # [nnz] float64, (e^z - 1)/Z on the support (cast to the student dtype per step)
    base: torch.Tensor  # [N+1] float64, 1/Z (row 0 and rows without successors: 1/N)

    def to(self, device: torch.device | str) -> "TeacherWeights":
        return TeacherWeights(self.graph.to(device), self.tau, self.w.to(device), self.base.to(device))


def teacher_weights(graph: TransitionGraph, tau: float) -> TeacherWeights:
    """The closed-form teacher of every row 0..N at once (float64)."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    rows = torch.arange(graph.num_items + 1, device=graph.indptr.device)
    row, col, z = graph.teacher_logits_sparse(rows, tau)  # row = CSR row of every nonzero, in order
    z = z.double()
    deg = (graph.indptr[1:] - graph.indptr[:-1]).double()  # [N+1]
    m = torch.where(deg > 0, 1.0 / tau, 0.0).double()  # max z of a non-empty row is exactly 1/τ
    e = torch.exp(z - m[row])  # e^{z-m} on the support
    Z = torch.zeros(graph.num_items + 1, dtype=torch.float64, device=z.device).index_add_(0, row, e)
    Z = Z + (graph.num_items - deg) * torch.exp(-m)  # Z·e^{-m}
    w = (e - torch.exp(-m[row])) / Z[row]
    base = torch.exp(-m) / Z
    return TeacherWeights(graph, float(tau), w, base)


def ted_kd_loss(graph: TransitionGraph, items: torch.Tensor, student: torch.Tensor,
                table: torch.Tensor, tau: float, weights: TeacherWeights | None = None) -> torch.Tensor:
    """Mean over the R rows of -Σ_j p_{items[r]}[j] log q_r[j], q_r = softmax(student[r] · table^T / τ).

    items [R] (ids 1..N, one per non-pad occurrence), student [R,d] (√d·Dropout(E[items])),
    table [N,d] (items 1..N, no padding row). Teacher used only on its sparse support; pass
    `weights = teacher_weights(graph, tau)` to reuse it across steps (computed here otherwise).
    """
    n_items = table.shape[0]
    if n_items != graph.num_items:
        raise ValueError(f"item table has {n_items} items but the transition graph {graph.num_items}")
    if weights is None:
        weights = teacher_weights(graph, tau)
    elif weights.graph is not graph or weights.tau != tau:
        raise ValueError(f"weights were computed for another graph or tau ({weights.tau}), not tau={tau}")
    u = student / tau  # [R,d] (dividing here, not the [R,N] logits)
    s = u @ table.T  # [R,N] student logits
    zero = torch.zeros(items.numel(), dtype=torch.long, device=s.device)
    lse = F.cross_entropy(s, zero, reduction="none") + u @ table[0]  # [R] CE(s, 0) = lse - s_0
    uniq, inv = torch.unique(items, return_inverse=True)  # [U], [R]
    row, flat = graph.row_positions(uniq)  # [P]
    row, flat = row.to(s.device), flat.to(s.device)
    col = weights.graph.indices.to(s.device)[flat]
    w = weights.w.to(s.device)[flat].to(s.dtype)
    base = weights.base.to(s.device)[uniq].to(s.dtype)  # [U]
    t = torch.zeros(uniq.numel(), table.shape[1], dtype=s.dtype, device=s.device).index_add_(
        0, row, w[:, None] * table[col - 1])  # [U,d] Σ_S w E_j
    t = t + base[:, None] * table.sum(0)  # [U,d] teacher-expected embedding Σ_j p_j E_j
    expected = (u * t[inv]).sum(-1)  # [R] Σ_j p_j s_j
    return (lse - expected).mean()
