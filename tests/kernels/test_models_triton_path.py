"""Issue 7 acceptance: TWIN, DARE and SDIM give the same logits, training gradients and serving
scores when the retrieval-stage ops run the Triton kernels instead of the PyTorch reference.

On a CPU-only machine `use_triton_on_cpu()` (tests/kernels/triton_on_cpu.py) routes the CPU implementations (forwards
and the registered backward ops) to the Triton launchers under TRITON_INTERPRET=1; every test also
counts the launcher calls, so a switch that silently kept the reference would fail.
SDIM's training route (`SimHashInterest.forward`) uses the collision-mask bmm and calls no
table/gather op, so SDIM is checked on its serving route (encode_user / append_to_state /
score_candidates -> simhash_codes, sdim_bucket_table, sdim_gather and their backwards), plus
"serving route on Triton == training forward on the reference".
Shapes are tiny (B=4, L<=24) so the interpreter finishes in seconds.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import kernels.triton.sdim as tri_sdim
import kernels.triton.simhash as tri_simhash
import kernels.triton.topk as tri_topk
from kernels import ops
from kernels.triton._common import interpreting
from recsys.models.dare import DARE, DAREConfig
from recsys.models.sdim import SDIM, SDIMConfig
from recsys.models.twin import TWIN, TWINConfig
from tests.kernels.triton_on_cpu import use_triton_on_cpu

pytestmark = pytest.mark.skipif(not interpreting(), reason="needs TRITON_INTERPRET=1 (Triton on CPU tensors)")

ATOL = 1e-4  # fp32; reference and Triton differ only in summation order
NUM_ITEMS, NUM_CATS = 50, 6

_LAUNCHERS = [
    (tri_simhash, "simhash_codes_triton"),
    (tri_sdim, "sdim_bucket_table_triton"),
    (tri_sdim, "sdim_bucket_table_backward_triton"),
    (tri_sdim, "sdim_gather_triton"),
    (tri_sdim, "sdim_gather_backward_triton"),
    (tri_topk, "topk_target_search_triton"),
    (tri_topk, "topk_aggregate_triton"),
    (tri_topk, "topk_aggregate_backward_triton"),
]


@pytest.fixture
def calls(monkeypatch) -> Counter:
    """Counts calls of each Triton launcher (wrapped in place; `kernels._library` imports them lazily)."""
    counter: Counter = Counter()
    for module, name in _LAUNCHERS:
        fn = getattr(module, name)

        def wrapped(*args, _fn=fn, _name=name, **kwargs):
            counter[_name] += 1
            return _fn(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapped)
    return counter


def _batch(seed: int) -> dict[str, torch.Tensor]:
    """B=4 right-padded histories of lengths 24, 13, 1, 0 (ids >= 1 on valid slots, 0 on padding)."""
    g = torch.Generator().manual_seed(seed)
    b, l = 4, 24
    lengths = torch.tensor([24, 13, 1, 0])
    valid = torch.arange(l)[None, :] < lengths[:, None]
    items = torch.randint(1, NUM_ITEMS + 1, (b, l), generator=g) * valid
    cats = torch.randint(1, NUM_CATS + 1, (b, l), generator=g) * valid
    return {
        "hist_items": items, "hist_cats": cats, "hist_lengths": lengths,
        "target_items": torch.randint(1, NUM_ITEMS + 1, (b,), generator=g),
        "target_cats": torch.randint(1, NUM_CATS + 1, (b,), generator=g),
        "labels": torch.tensor([1.0, 0.0, 1.0, 0.0]),
    }


def _twin() -> TWIN:
    cfg = TWINConfig(item_dim=8, cat_dim=4, pos_dim=4, max_position=64, top_k=5, head_hidden=[16], init_std=0.3)
    return TWIN.from_config(cfg, NUM_ITEMS, NUM_CATS)


def _dare() -> DARE:
    cfg = DAREConfig(item_dim=8, cat_dim=4, pos_dim=4, attention_item_dim=4, attention_cat_dim=4,
                     attention_pos_dim=4, max_position=64, top_k=5, head_hidden=[16], init_std=0.3)
    return DARE.from_config(cfg, NUM_ITEMS, NUM_CATS)


def _sdim() -> SDIM:
    cfg = SDIMConfig(item_dim=8, cat_dim=4, num_hashes=12, tau=3, short_len=4, attention_dim=8, num_heads=2,
                     head_hidden=[16], init_std=0.3)
    return SDIM.from_config(cfg, NUM_ITEMS, NUM_CATS)


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    got = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(params.items(), got)}


def _assert_same_grads(ref: dict[str, torch.Tensor], tri: dict[str, torch.Tensor], table_prefixes: tuple) -> None:
    assert ref.keys() == tri.keys()
    for name in ref:
        torch.testing.assert_close(tri[name], ref[name], atol=ATOL, rtol=1e-4, msg=name)
    for prefix in table_prefixes:  # the embedding tables the ops feed must actually get gradient
        assert ref[prefix].abs().sum() > 0, f"{prefix} got no gradient"


def test_switch_needs_interpreter_and_is_scoped(monkeypatch, calls):
    q, keys, lengths = torch.randn(1, 2, 4), torch.randn(1, 6, 4), torch.tensor([6])
    ref = ops.topk_target_search(q, keys, lengths, 3)
    assert not calls  # outside the block: the reference
    with pytest.raises(ValueError), use_triton_on_cpu():
        tri = ops.topk_target_search(q, keys, lengths, 3)
        assert calls["topk_target_search_triton"] == 1
        raise ValueError("leave the block by an exception")
    assert torch.equal(tri[1], ref[1])
    ops.topk_target_search(q, keys, lengths, 3)
    assert calls["topk_target_search_triton"] == 1  # disabled again, even after an error
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"), use_triton_on_cpu():
        pass


@pytest.mark.parametrize("make", [_twin, _dare], ids=["twin", "dare"])
def test_two_stage_models_same_on_triton_path(make, calls):
    torch.manual_seed(0)
    model = make()
    batch = _batch(1)
    b0 = batch["hist_items"][0]

    # forward logits, the searched slots and the serving route (eval: BatchNorm running stats)
    model.eval()
    with torch.no_grad():
        ref_logits, ref_idx = model(batch), model.retrieval_indices(batch)
        ref_serve = model.score_candidates(model.encode_user(b0, batch["hist_cats"][0]),
                                           batch["target_items"], batch["target_cats"])
    assert not calls, "the reference path must not call Triton"
    with torch.no_grad(), use_triton_on_cpu():
        tri_logits, tri_idx = model(batch), model.retrieval_indices(batch)
        tri_serve = model.score_candidates(model.encode_user(b0, batch["hist_cats"][0]),
                                           batch["target_items"], batch["target_cats"])
    assert calls["topk_target_search_triton"] >= 3 and calls["topk_aggregate_triton"] >= 2
    assert torch.equal(tri_idx, ref_idx)
    assert ref_idx[3].eq(-1).all() and ref_idx[2, 1:].eq(-1).all()  # lengths 0 and 1 reached the op
    torch.testing.assert_close(tri_logits, ref_logits, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(tri_serve, ref_serve, atol=ATOL, rtol=1e-4)
    assert ref_logits.std() > 1e-3  # the model is not constant (init_std 0.3), so agreement means something

    # one training step's loss and gradients (train mode: BatchNorm on batch statistics)
    model.train()
    ref_loss, _ = model.training_loss(batch)
    ref_grads = _grads(model, ref_loss)
    n_bwd = calls["topk_aggregate_backward_triton"]
    with use_triton_on_cpu():
        tri_loss, _ = model.training_loss(batch)
        tri_grads = _grads(model, tri_loss)  # backward inside the block: the backward ops see the flag
    assert calls["topk_aggregate_backward_triton"] == n_bwd + 1
    torch.testing.assert_close(tri_loss, ref_loss, atol=ATOL, rtol=1e-5)
    tables = ("att_emb.item.weight", "att_emb.cat.weight", "att_emb.pos.weight")
    if model.rep_table is not None:
        tables += ("rep_table.item.weight", "rep_table.cat.weight", "rep_table.pos.weight")
    _assert_same_grads(ref_grads, tri_grads, tuple(t for t in tables if t in ref_grads))


def test_sdim_serving_route_same_on_triton_path(calls):
    torch.manual_seed(0)
    model = _sdim().eval()
    batch = _batch(2)
    hist_items, hist_cats = batch["hist_items"][0], batch["hist_cats"][0]
    cand_items, cand_cats = torch.arange(1, 7), torch.tensor([1, 2, 3, 4, 5, 6])
    new_items, new_cats = torch.tensor([7, 8, 9]), torch.tensor([1, 1, 2])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0])

    def route():
        state = model.encode_user(hist_items, hist_cats)
        scores = model.score_candidates(state, cand_items, cand_cats)
        appended = model.append_to_state(state, new_items, new_cats, max_history=25)  # evicts 2
        scores2 = model.score_candidates(appended, cand_items, cand_cats)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(scores, labels)
        return scores.detach(), scores2.detach(), appended["table"].detach(), _grads(model, loss)

    ref = route()
    assert not calls, "the reference path must not call Triton"
    with use_triton_on_cpu():
        tri = route()
    for name in ("simhash_codes_triton", "sdim_bucket_table_triton", "sdim_gather_triton",
                 "sdim_bucket_table_backward_triton", "sdim_gather_backward_triton"):
        assert calls[name] >= 1, f"{name} not called under use_triton_on_cpu()"
    for r, t in zip(ref[:3], tri[:3]):
        torch.testing.assert_close(t, r, atol=ATOL, rtol=1e-4)
    assert ref[0].std() > 1e-3
    _assert_same_grads(ref[3], tri[3], ("emb.item.weight", "emb.cat.weight"))

    # the Triton serving route equals the training forward (collision form, no ops) on the same history
    with torch.no_grad():
        one = {k: v[:1] for k, v in batch.items() if k != "labels"}
        c = cand_items.shape[0]
        rows = {"hist_items": one["hist_items"].expand(c, -1), "hist_cats": one["hist_cats"].expand(c, -1),
                "hist_lengths": one["hist_lengths"].expand(c), "target_items": cand_items, "target_cats": cand_cats}
        torch.testing.assert_close(model(rows), tri[0], atol=ATOL, rtol=1e-4)
