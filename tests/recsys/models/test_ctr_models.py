"""CTR models (DIN, TWIN, TWIN-hard, DARE, SDIM): serving-split equivalence, incremental state,
padding invariance, DARE's decoupled gradients, learning on a fixed batch, saving."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from recsys.config import read_yaml
from recsys.models.registry import build_model, parse_model_config

N_ITEMS, N_CATS, L = 40, 5, 24
SMALL = {"item_dim": 6, "cat_dim": 4, "head_hidden": [16, 8], "init_std": 0.3}
VARIANTS = {
    "din": {"name": "din", "pos_dim": 3, "max_recent": 10, **SMALL},
    "din_dot_full": {"name": "din", "pos_dim": 3, "attention": "dot", "max_recent": None, **SMALL},
    "twin": {"name": "twin", "pos_dim": 3, "top_k": 5, "use_aux_loss": True, "aux_hidden": [8], **SMALL},
    "twin_hard": {"name": "twin", "pos_dim": 3, "top_k": 5, "search": "hard", **SMALL},
    "dare": {"name": "dare", "pos_dim": 3, "attention_item_dim": 3, "attention_cat_dim": 2, "attention_pos_dim": 2,
             "top_k": 5, "use_aux_loss": True, "aux_hidden": [8], **SMALL},
    "sdim": {"name": "sdim", "num_hashes": 12, "tau": 3, "short_len": 4, "attention_dim": 8, **SMALL},
}
# the head also sees v_t * long and v_t * short (the DIN / DARE head input form)
VARIANTS["sdim_products"] = {**VARIANTS["sdim"], "target_products": True}


def make(variant: str, num_categories: int = N_CATS):
    torch.manual_seed(0)
    return build_model(parse_model_config(dict(VARIANTS[variant])), N_ITEMS, num_categories)


def make_batch(b: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, L + 1, (b,), generator=g)
    lengths[0], lengths[1] = 0, L
    valid = torch.arange(L)[None] < lengths[:, None]
    return {
        "user_ids": torch.arange(b),
        "target_items": torch.randint(1, N_ITEMS + 1, (b,), generator=g),
        "target_cats": torch.randint(1, N_CATS + 1, (b,), generator=g),
        "hist_items": torch.randint(1, N_ITEMS + 1, (b, L), generator=g) * valid,
        "hist_cats": torch.randint(1, N_CATS + 1, (b, L), generator=g) * valid,
        "hist_lengths": lengths,
        "labels": torch.randint(0, 2, (b,), generator=g).float(),
    }


def user_rows(hist_items, hist_cats, cand_items, cand_cats):
    c, l = cand_items.shape[0], hist_items.shape[0]
    return {"target_items": cand_items, "target_cats": cand_cats,
            "hist_items": hist_items[None].expand(c, l), "hist_cats": hist_cats[None].expand(c, l),
            "hist_lengths": torch.full((c,), l)}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_encode_score_equals_forward(variant: str) -> None:
    model = make(variant).eval()
    g = torch.Generator().manual_seed(1)
    hi, hc = torch.randint(1, N_ITEMS + 1, (L,), generator=g), torch.randint(1, N_CATS + 1, (L,), generator=g)
    ci, cc = torch.randint(1, N_ITEMS + 1, (9,), generator=g), torch.randint(1, N_CATS + 1, (9,), generator=g)
    with torch.no_grad():
        want = model(user_rows(hi, hc, ci, cc))
        got = model.score_candidates(model.encode_user(hi, hc), ci, cc)
        empty = model.score_candidates(model.encode_user(hi[:0], hc[:0]), ci, cc)
        want_empty = model(user_rows(hi[:0], hc[:0], ci, cc))
    assert got.shape == (9,) and want.std() > 1e-3  # outputs really vary with the candidate
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(empty, want_empty, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_append_to_state_equals_encoding_longer_history(variant: str) -> None:
    model = make(variant).eval()
    g = torch.Generator().manual_seed(2)
    hi, hc = torch.randint(1, N_ITEMS + 1, (30,), generator=g), torch.randint(1, N_CATS + 1, (30,), generator=g)
    ci, cc = torch.randint(1, N_ITEMS + 1, (6,), generator=g), torch.randint(1, N_CATS + 1, (6,), generator=g)
    with torch.no_grad():
        for start, cut, max_history in [(0, 15, 100), (0, 15, 20), (5, 28, 8), (0, 0, 30)]:
            state = model.encode_user(hi[start:cut], hc[start:cut])
            state = model.append_to_state(state, hi[cut:], hc[cut:], max_history=max_history)
            ref_i, ref_c = hi[start:][-max_history:], hc[start:][-max_history:]
            ref = model.encode_user(ref_i, ref_c)
            for key in ref:
                torch.testing.assert_close(state[key], ref[key], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(model.score_candidates(state, ci, cc), model(user_rows(ref_i, ref_c, ci, cc)),
                                       atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padded_positions_never_influence_outputs(variant: str) -> None:
    model = make(variant).eval()
    batch = make_batch()
    other = dict(batch)
    valid = torch.arange(L)[None] < batch["hist_lengths"][:, None]
    other["hist_items"] = torch.where(valid, batch["hist_items"], torch.randint(1, N_ITEMS + 1, (8, L)))
    other["hist_cats"] = torch.where(valid, batch["hist_cats"], torch.randint(1, N_CATS + 1, (8, L)))
    with torch.no_grad():
        torch.testing.assert_close(model(other), model(batch), atol=0, rtol=0)
    # and a longer padded tail changes nothing either
    wide = dict(batch)
    wide["hist_items"] = torch.cat([batch["hist_items"], torch.randint(1, N_ITEMS + 1, (8, 5))], 1)
    wide["hist_cats"] = torch.cat([batch["hist_cats"], torch.randint(1, N_CATS + 1, (8, 5))], 1)
    with torch.no_grad():
        torch.testing.assert_close(model(wide), model(batch), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_training_reduces_loss_on_a_fixed_batch(variant: str) -> None:
    model = make(variant).train()
    batch = make_batch(b=32, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    first = None
    for _ in range(40):
        loss, logs = model.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = logs["bce"] if first is None else first
        assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert logs["bce"] < 0.8 * first, (first, logs)
    if VARIANTS[variant].get("use_aux_loss"):
        assert "aux_bce" in logs


def _grads_after(model, loss: torch.Tensor) -> dict[str, float]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    out = {}
    for name, p in model.named_parameters():
        if name.startswith(("att_emb.", "rep_table.")):
            out[name] = 0.0 if p.grad is None else float(p.grad.abs().sum())
    return out


def test_dare_paths_update_only_their_own_table() -> None:
    from kernels import ops

    model = make("dare").train()
    batch = make_batch(b=16, seed=4)
    # attention path: a loss of the (recomputed) top-k scores only
    p = model.paths(batch)
    grads = _grads_after(model, p["scores"].masked_fill(p["indices"] < 0, 0.0).sum())
    assert grads["att_emb.item.weight"] > 0 and grads["att_emb.pos.weight"] > 0
    assert all(v == 0 for k, v in grads.items() if k.startswith("rep_table."))
    # representation path: the head on [v_t, u, v_t*u] with the attention weights held fixed
    p = model.paths(batch)
    u = ops.topk_aggregate(p["scores"].detach(), p["indices"], p["values"])[:, 0]
    vt = p["vt"]
    grads = _grads_after(model, model.head(torch.cat([vt, u, vt * u], -1)).sum())
    assert grads["rep_table.item.weight"] > 0 and grads["rep_table.cat.weight"] > 0
    assert all(v == 0 for k, v in grads.items() if k.startswith("att_emb."))
    # the full loss reaches both tables (the decoupled gradients add up, nothing is cut)
    loss, _ = model.training_loss(batch)
    grads = _grads_after(model, loss)
    assert grads["att_emb.item.weight"] > 0 and grads["rep_table.item.weight"] > 0


def test_twin_scores_path_reaches_the_shared_table() -> None:
    model = make("twin").train()
    p = model.paths(make_batch(b=16, seed=4))
    model.zero_grad(set_to_none=True)
    p["scores"].masked_fill(p["indices"] < 0, 0.0).sum().backward()
    assert model.rep_emb is model.att_emb and model.att_emb.item.weight.grad.abs().sum() > 0


def test_dare_attention_table_can_be_smaller() -> None:
    model = make("dare")
    assert model.att_emb.dim == 3 + 2 + 2 and model.rep_emb.dim == 6 + 4 + 3
    p = model.paths(make_batch())
    assert p["keys"].shape[-1] == 7 and p["values"].shape[-1] == 13


def test_twin_hard_retrieves_same_category_first() -> None:
    model = make("twin_hard").eval()
    batch = make_batch(b=8, seed=5)
    idx = model.paths(batch)["indices"][:, 0]  # [B,k]
    for b in range(8):
        n = int(batch["hist_lengths"][b])
        same = [j for j in range(n) if batch["hist_cats"][b, j] == batch["target_cats"][b]][::-1]
        others = [j for j in range(n) if batch["hist_cats"][b, j] != batch["target_cats"][b]][::-1]
        want = (same + others)[:5]
        assert idx[b].tolist() == want + [-1] * (5 - len(want))


def _brute_force_search(model, batch, k: int) -> list[list[int]]:
    """Stage 1 by hand, one row and one slot at a time: soft search ranks the valid slots by the
    dot product of the scaled target query with each slot's attention key (ties: older slot first);
    hard search takes the most recent same-category slots, then the most recent others."""
    out = []
    for b in range(batch["target_items"].shape[0]):
        n = int(batch["hist_lengths"][b])
        if model.search == "hard":
            same = [j for j in range(n) if batch["hist_cats"][b, j] == batch["target_cats"][b]][::-1]
            order = same + [j for j in range(n) if j not in same][::-1]
        else:
            one = {key: v[b : b + 1] for key, v in batch.items()}
            keys = model.att_emb.history(one["hist_items"], one["hist_cats"], one["hist_lengths"])[0]  # [L,da]
            q = model.att_emb.target(one["target_items"], one["target_cats"])[0] * model._query_scale()  # [da]
            scores = [float(torch.dot(q, keys[j])) for j in range(n)]
            order = sorted(range(n), key=lambda j: (-scores[j], j))
        out.append(order[:k] + [-1] * max(k - n, 0))
    return out


@pytest.mark.parametrize("variant", ["twin", "twin_hard", "dare"])
def test_retrieval_indices_match_brute_force_search(variant: str) -> None:
    """retrieval_indices is stage 1 alone: equal to a per-slot brute force for k below, at and above
    top_k and above L (-1 padding), and at k = top_k exactly the slots stage 2 aggregates."""
    model = make(variant).eval()
    batch = make_batch(b=12, seed=7)
    for k in (1, 3, 5, 9, L + 4):
        got = model.retrieval_indices(batch, k)
        assert got.dtype == torch.int64 and got.shape == (12, k)
        assert got.tolist() == _brute_force_search(model, batch, k), k
    assert torch.equal(model.retrieval_indices(batch), model.paths(batch)["indices"][:, 0])
    assert (model.retrieval_indices(batch, L + 4)[0] == -1).all()  # empty history: nothing retrieved
    with pytest.raises(ValueError, match="k must be >= 1"):
        model.retrieval_indices(batch, 0)
    with pytest.raises(KeyError, match="hist_lengths"):
        model.retrieval_indices({key: v for key, v in batch.items() if key != "hist_lengths"}, 3)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_models_without_categories(variant: str) -> None:
    model = make(variant, num_categories=0).eval()
    batch = make_batch()
    batch2 = dict(batch, hist_cats=torch.zeros_like(batch["hist_cats"]), target_cats=torch.zeros_like(batch["target_cats"]))
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model(batch2))  # categories are not a field at all
    state = model.encode_user(batch["hist_items"][1], None)
    assert model.score_candidates(state, batch["target_items"], None).shape == (8,)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_weights_save_and_reload_identically(variant: str, tmp_path: Path) -> None:
    model = make(variant).eval()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    torch.manual_seed(123)
    other = build_model(parse_model_config(dict(VARIANTS[variant], hash_seed=9) if variant.startswith("sdim")
                                           else dict(VARIANTS[variant])), N_ITEMS, N_CATS).eval()
    other.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    batch = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(other(batch), model(batch))  # SDIM: the projections travel with the weights


def test_bad_batch_names_the_field() -> None:
    model = make("dare")
    batch = make_batch()
    with pytest.raises(KeyError, match="hist_lengths"):
        model({k: v for k, v in batch.items() if k != "hist_lengths"})
    with pytest.raises(ValueError, match="hist_lengths"):
        model(dict(batch, hist_lengths=batch["hist_lengths"] + L))


@pytest.mark.parametrize("name", ["din", "twin", "dare", "sdim"])
def test_paper_configs_parse_and_build(name: str) -> None:
    root = Path(__file__).resolve().parents[3]
    cfg = parse_model_config(read_yaml(root / "configs" / "models" / f"{name}.yaml"))
    model = build_model(cfg, 50, 7).eval()
    with torch.no_grad():
        batch = make_batch()
        batch["hist_items"] = batch["hist_items"].clamp(max=50)
        assert model(batch).shape == (8,)
    if name == "sdim":
        assert model.hashing.num_signatures == 16 and model.hashing.num_buckets == 8
    if name == "dare":
        assert model.top_k == 20


@pytest.mark.parametrize("num_categories", [N_CATS, 0])
def test_sdim_history_codes_per_distinct_id_equal_per_position_codes(num_categories: int) -> None:
    model = make("sdim", num_categories)
    batch = make_batch()
    items, cats = batch["hist_items"], batch["hist_cats"] if num_categories else None
    fields = (model.emb.item(items),) + ((model.emb.cat(cats),) if num_categories else ())
    per_position = model.hashing.small_codes(fields)  # [B,L,S]
    per_id = model._history_codes(items, cats)
    assert per_id.dtype == per_position.dtype and torch.equal(per_id, per_position)
