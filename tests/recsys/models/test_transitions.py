"""TED teacher graph on a hand-made example and the closed-form sparse KD loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys.data.sequences import JaggedSequences
from recsys.models.transitions import TransitionGraph, teacher_weights, ted_kd_loss


def _sequences() -> JaggedSequences:
    # row 0: [1,2,3,2 | 5]  (train part = first 4; max_len 3 keeps [2,3,2])
    # row 1: [2,3,4]        (train part = all)
    # row 2: [4,1 | 3]      (train part = first 2)
    items = np.array([1, 2, 3, 2, 5, 2, 3, 4, 4, 1, 3])
    return JaggedSequences(user_ids=np.array([1, 2, 3]), offsets=np.array([0, 5, 8, 11]), items=items)


TRAIN_ENDS = np.array([4, 3, 2])


def _dense(g: TransitionGraph) -> np.ndarray:
    a = np.zeros((g.num_items + 1, g.num_items + 1))
    ip, ix, c = g.indptr.numpy(), g.indices.numpy(), g.counts.numpy()
    for i in range(g.num_items + 1):
        a[i, ix[ip[i] : ip[i + 1]]] = c[ip[i] : ip[i + 1]]
    return a


def test_counts_training_part_truncated_to_max_len() -> None:
    g = TransitionGraph.from_sequences(_sequences(), TRAIN_ENDS, max_len=3, num_items=5)
    expected = np.zeros((6, 6))
    expected[2, 3] = 2  # 2->3 in rows 0 and 1
    expected[3, 2] = 1
    expected[3, 4] = 1
    expected[4, 1] = 1
    assert np.array_equal(_dense(g), expected)  # 1->2 (cut by max_len), 2->5 and 1->3 (not train) absent
    assert g.indptr.shape == (7,) and g.nnz == 4


def test_time_span_two() -> None:
    g = TransitionGraph.from_sequences(_sequences(), TRAIN_ENDS, max_len=3, time_span=2, num_items=5)
    a = _dense(g)
    assert a[2, 2] == 1 and a[2, 4] == 1 and a[2, 3] == 2 and a.sum() == 7


def test_teacher_rows_hand_computed() -> None:
    g = TransitionGraph.from_sequences(_sequences(), TRAIN_ENDS, max_len=3, num_items=5)
    p = g.teacher_probs(torch.tensor([2, 3, 1, 5]), tau=0.5).numpy()
    e2 = math.exp(2.0)  # (count / row max) / τ = 1 / 0.5 for every max entry
    assert np.allclose(p[0], np.array([1, 1, e2, 1, 1]) / (e2 + 4))
    assert np.allclose(p[1], np.array([1, e2, 1, e2, 1]) / (2 * e2 + 3))
    assert np.allclose(p[2], np.full(5, 0.2))  # no successor -> uniform
    assert np.allclose(p[3], np.full(5, 0.2))


def test_bad_inputs_named() -> None:
    with pytest.raises(ValueError, match="num_items"):
        TransitionGraph.from_sequences(_sequences(), TRAIN_ENDS, max_len=3, num_items=3)
    with pytest.raises(ValueError, match="train_ends"):
        TransitionGraph.from_sequences(_sequences(), np.array([4, 3, 9]), max_len=3, num_items=5)
    with pytest.raises(ValueError, match="train_ends"):
        TransitionGraph.from_sequences(_sequences(), np.array([4, 3]), max_len=3, num_items=5)


@pytest.mark.parametrize("tau", [0.1, 0.5, 0.01])
def test_sparse_kd_equals_dense_cross_entropy(tau: float) -> None:
    g = TransitionGraph.from_sequences(_sequences(), TRAIN_ENDS, max_len=3, time_span=2, num_items=5)
    items = torch.tensor([2, 3, 2, 1, 4, 5])  # duplicates kept, items without successors included
    table = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    student = 2.0 * table[items - 1]
    loss = ted_kd_loss(g, items, student, table, tau)
    p = g.teacher_probs(items, tau)
    dense = -(p * torch.log_softmax(student @ table.T / tau, dim=1)).sum(1).mean()
    assert torch.allclose(loss, dense, rtol=1e-9, atol=1e-9)
    (ga,) = torch.autograd.grad(loss, table, retain_graph=True)
    (gb,) = torch.autograd.grad(dense, table)
    assert torch.allclose(ga, gb, atol=1e-8)


def test_kd_rejects_mismatched_table() -> None:
    g = TransitionGraph.from_sequences(_sequences(), TRAIN_ENDS, max_len=3, num_items=5)
    with pytest.raises(ValueError, match="items"):
        ted_kd_loss(g, torch.tensor([1]), torch.randn(1, 4), torch.randn(6, 4), 0.1)


def test_real_data_pair_count(shared_data) -> None:  # noqa: ANN001
    """On real SASRec-format data (Games), the graph holds every adjacent training pair once."""
    path = shared_data / "amazon-games-sasrec" / "Video.txt"
    assert path.is_file(), f"{path} missing from the shared data folder"
    arr = np.loadtxt(path, dtype=np.int64)[:20000]
    users, starts = np.unique(arr[:, 0], return_index=True)
    order = np.argsort(starts)
    offsets = np.append(np.sort(starts), len(arr))
    sequences = JaggedSequences(user_ids=users[order], offsets=offsets, items=arr[:, 1])
    ends = np.maximum(sequences.lengths - 2, 0)
    n_items = int(arr[:, 1].max())
    g = TransitionGraph.from_sequences(sequences, ends, max_len=50, num_items=n_items)
    assert float(g.counts.sum()) == float(np.maximum(np.minimum(ends, 50) - 1, 0).sum())
    assert int(g.indptr[-1]) == g.nnz and bool((g.indptr[1:] >= g.indptr[:-1]).all())


def _kd_before_speedup(graph: TransitionGraph, items: torch.Tensor, student: torch.Tensor,
                       table: torch.Tensor, tau: float) -> torch.Tensor:
    """ted_kd_loss as it was before the speed-up (logits divided by τ after the product, teacher
    weights per step, support logits indexed out of the [R, N] matrix): the oracle it must match."""
    n_items = table.shape[0]
    s = student @ table.T / tau
    lse = torch.logsumexp(s, dim=1)
    s_all = student @ table.sum(0) / tau
    row, col, z = graph.teacher_logits_sparse(items, tau)
    R = items.numel()
    has = torch.zeros(R, dtype=torch.bool).index_fill_(0, row, True)
    m = torch.where(has, torch.full((R,), 1.0 / tau), torch.zeros(R)).double()
    e = torch.exp(z.double() - m[row])
    deg = torch.bincount(row, minlength=R).double()
    Z = torch.zeros(R, dtype=torch.float64).index_add_(0, row, e) + (n_items - deg) * torch.exp(-m)
    w = ((e - torch.exp(-m[row])) / Z[row]).to(s.dtype)
    base = (torch.exp(-m) / Z).to(s.dtype)
    supp = torch.zeros(R, dtype=s.dtype).index_add_(0, row, w * s[row, col - 1])
    return (lse - (supp + base * s_all)).mean()


def _random_graph(n_items: int, n_users: int, seed: int) -> tuple[TransitionGraph, JaggedSequences]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 30, n_users)
    items = (rng.zipf(1.3, lengths.sum()) % n_items) + 1  # skewed: popular items have many successors
    sequences = JaggedSequences(user_ids=np.arange(n_users), offsets=np.concatenate([[0], np.cumsum(lengths)]), items=items)
    return TransitionGraph.from_sequences(sequences, lengths - 1, max_len=20, num_items=n_items), sequences


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_fast_kd_matches_previous_implementation_fp32(tau: float) -> None:
    """float32, a few hundred items with skewed degrees and many duplicates: same loss and gradients
    (table and student) as the implementation before the speed-up, to fp32 tolerance."""
    g, sequences = _random_graph(300, 200, seed=1)
    torch.manual_seed(0)
    items = torch.from_numpy(sequences.items[:600])  # duplicates kept, includes rows without successors
    assert (g.indptr[items + 1] == g.indptr[items]).any() and items.unique().numel() < items.numel()
    table = (0.1 * torch.randn(300, 16)).requires_grad_()
    student = 4.0 * torch.nn.functional.dropout(table[items - 1], 0.5)
    fast = ted_kd_loss(g, items, student, table, tau, weights=teacher_weights(g, tau))
    slow = _kd_before_speedup(g, items, student, table, tau)
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-6)
    ga = torch.autograd.grad(fast, table, retain_graph=True)[0]
    gb = torch.autograd.grad(slow, table, retain_graph=True)[0]
    assert (ga - gb).abs().max() <= 1e-4 * gb.abs().max()  # fp32 rounding, summed over 600 rows
    # in float64 the two agree to rounding of float64
    t64 = table.detach().double().requires_grad_()
    s64 = student.detach().double()
    f64 = ted_kd_loss(g, items, s64, t64, tau)
    g64 = torch.autograd.grad(f64, t64)[0]
    t64b = table.detach().double().requires_grad_()
    g64b = torch.autograd.grad(_kd_before_speedup(g, items, s64, t64b, tau), t64b)[0]
    assert torch.allclose(g64, g64b, rtol=1e-9, atol=1e-12)
    # the teacher weights reproduce the dense teacher rows
    tw = teacher_weights(g, tau)
    row, flat = g.row_positions(items[:50])
    dense = torch.zeros(50, 300, dtype=torch.float64) + tw.base[items[:50]][:, None]
    dense[row, g.indices[flat] - 1] += tw.w[flat]
    assert torch.allclose(dense, g.teacher_probs(items[:50], tau), atol=1e-12)


def test_weights_for_another_tau_rejected() -> None:
    g = TransitionGraph.from_sequences(_sequences(), TRAIN_ENDS, max_len=3, num_items=5)
    with pytest.raises(ValueError, match="tau"):
        ted_kd_loss(g, torch.tensor([1]), torch.randn(1, 4), torch.randn(5, 4), 0.1, weights=teacher_weights(g, 0.5))
