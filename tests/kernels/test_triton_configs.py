"""Split-K top-k search plans (many chunks + merge, the exact fallback under heavy ties), the
fixed-config rules, and the warm-up entry point - on the interpreter (CI) or the GPU.

Exact checks use small-integer embeddings (every dot product exact in any precision), so the
indices must equal the reference's, ties included (smaller index wins).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.reference.topk_search import topk_target_search
from kernels.triton.configs import search_config
from kernels.triton.search import topk_target_search_triton
from kernels.triton.topk import agg_block_c, agg_block_c_choices
from tests.kernels._devices import rel_err, triton_device, triton_devices
from tests.kernels.triton_on_cpu import use_triton_on_cpu

MANY = 10**6  # pretend multiprocessor count: as many chunks as the history allows


@pytest.mark.parametrize("device", triton_devices())
@settings(max_examples=5, deadline=None)
@given(b=st.integers(1, 2), c=st.sampled_from([1, 3, 17]), l=st.sampled_from([70, 130]),
       da=st.integers(1, 9), k=st.sampled_from([1, 3, 8, 20]), subs=st.sampled_from([1, 2]), bf16=st.booleans(),
       seed=st.integers(0, 2**16))
def test_split_plan_exact_with_ties(device, b, c, l, da, k, subs, bf16, seed):
    """Many chunks per row + the merge kernel == the reference, ties included; chunks of one
    sub-tile (direct selection) or two (threshold + scratch, or the exact fallback under ties)."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.bfloat16 if bf16 else torch.float32
    q = torch.randint(-2, 3, (b, c, da), generator=g).to(dtype)
    keys = torch.randint(-2, 3, (b, l, da), generator=g).to(dtype)
    lengths = torch.randint(0, l + 1, (b,), generator=g)
    lengths[0] = l
    cfg = search_config(b, c, l, k, MANY, sub=32, min_subs_per_chunk=subs)
    assert cfg.n_chunks > 1
    s, i = topk_target_search_triton(q.to(device), keys.to(device), lengths.to(device), k, cfg)
    rs, ri = topk_target_search(q, keys, lengths, k)
    assert torch.equal(i.cpu(), ri) and torch.equal(s.cpu(), rs)


def test_all_equal_scores_take_the_fallback_and_keep_the_tie_rule():
    """Every score equal: more than CAP keys pass each chunk's threshold (exact fallback path);
    the result is still the k smallest valid indices, in order, across chunk boundaries."""
    device = triton_device()
    q = torch.ones(1, 20, 4)
    keys = torch.ones(1, 300, 4)
    keys[0, 250] = 2.0                                  # one better key in a late chunk
    lengths = torch.tensor([290])
    for cfg in (search_config(1, 20, 300, 10, MANY, min_subs_per_chunk=2), search_config(1, 20, 300, 10, 1)):
        assert cfg.chunk > cfg.sub                      # threshold passes (not direct selection)
        s, i = topk_target_search_triton(q.to(device), keys.to(device), lengths.to(device), 10, cfg)
        assert i.cpu()[0].tolist() == [[250] + list(range(9))] * 20
        assert s.cpu()[0, :, 0].eq(8.0).all() and s.cpu()[0, :, 1:].eq(4.0).all()


@pytest.mark.parametrize("device", triton_devices())
def test_split_plan_continuous_scores(device):
    """N(0,1) data, ragged lengths, a 6-chunk plan: same top-k scores as the reference, and every
    returned index really has its returned score."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 20, 16, generator=g)
    keys = torch.randn(2, 1500, 16, generator=g)
    lengths = torch.tensor([1500, 333])
    cfg = search_config(2, 20, 1500, 16, MANY, min_subs_per_chunk=8)
    assert cfg.n_chunks >= 2
    s, i = topk_target_search_triton(q.to(device), keys.to(device), lengths.to(device), 16, cfg)
    s, i = s.cpu(), i.cpu()
    rs, _ = topk_target_search(q, keys, lengths, 16)
    assert rel_err(s, rs) < 1e-5
    assert (i >= 0).all() and (i < lengths[:, None, None]).all()
    rescored = torch.einsum("bcd,bckd->bck", q.double(), keys.double()[torch.arange(2)[:, None, None], i])
    assert torch.allclose(rescored, s.double(), atol=1e-4)


def test_search_rule_splits_long_rows_and_not_big_batches():
    serving = search_config(1, 512, 8192, 64, 132)
    assert serving.n_chunks >= 8 and serving.use_dot and serving.chunk % serving.sub == 0
    assert -(-512 // serving.block_c) * serving.n_chunks >= 256          # programs for 132 SMs
    assert search_config(256, 512, 8192, 64, 132).n_chunks == 1
    training = search_config(2048, 1, 2048, 20, 132)
    assert not training.use_dot and training.block_c == 1
    assert training.chunk == training.sub and training.n_chunks * training.chunk >= 2048   # direct chunks
    for l in (1, 100, 5000, 65536):                                         # chunks cover the row exactly
        cfg = search_config(1, 512, l, 20, 132)
        assert (cfg.n_chunks - 1) * cfg.chunk < max(l, 1) <= cfg.n_chunks * cfg.chunk


def test_aggregate_rule_picks_only_warmed_block_sizes():
    """The aggregate's BLOCK_C rule stays inside the set kernels.warmup compiles, at any batch."""
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        for k, dr in ((20, 64), (64, 64), (8, 16), (64, 128)):
            kp, dr_p = 1 << (k - 1).bit_length(), 1 << (dr - 1).bit_length()
            for b, c in ((1, 1), (1, 512), (256, 512), (2048, 1), (7, 33)):
                assert agg_block_c(b, c, kp, dr_p, torch.device(device)) in agg_block_c_choices(k, dr)


def test_warmup_compiles_then_ops_agree_with_reference():
    from kernels import ops
    from kernels.warmup import WarmupSpec, warmup

    device = triton_device()
    spec = WarmupSpec(device=device, max_history=40, candidates=(1, 17), k=(3,), da=(4,), dr=(4,), sdim=((4, 2, 2),))
    if device == "cpu":
        with use_triton_on_cpu():
            spent = warmup(spec)
    else:
        spent = warmup(spec)
    assert set(spent) == {"search+aggregate", "variants", "sdim"} and all(v >= 0 for v in spent.values())
