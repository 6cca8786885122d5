"""The polars reference build: sequences, leave-one-out, negatives, CTR samples, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from recsys.data import layout, schema
from recsys.data.build_config import BuildConfig, CtrConfig
from recsys.data.ctr_samples import target_positions
from recsys.data.readers import SourceConfig
from recsys.data.sequences import JaggedSequences
from recsys.data.build_run import build_polars
from recsys.data.vocab import load_vocabularies

TAOBAO = "taobao-userbehavior-sample/UserBehavior_sample.csv"


def _cfg(shared_data: Path, **kw) -> BuildConfig:
    return BuildConfig(name="t", source=SourceConfig(format="taobao_csv", path=str(shared_data / TAOBAO)), **kw)


@pytest.fixture(scope="module")
def taobao_build(shared_data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("taobao")
    build_polars(_cfg(shared_data), out)
    return out


def test_sequences_are_time_ordered_and_complete(taobao_build: Path, shared_data: Path) -> None:
    raw = pl.read_csv(shared_data / TAOBAO, has_header=False, new_columns=["u", "i", "c", "b", "t"])
    vocabs = load_vocabularies(taobao_build)
    sequences = pl.from_arrow(layout.read_table(taobao_build, layout.SEQUENCES))
    assert sequences[schema.USER].to_list() == list(range(1, 816))
    assert int(sequences[schema.SEQ_ITEMS].list.len().sum()) == raw.height
    # per user: items sorted by time, ties in input order (stable sort of the raw file)
    expect = raw.with_row_index("n").sort(["u", "t", "n"]).group_by("u", maintain_order=True).agg("i", "c", "t", "b")
    for k in (0, 100, 814):
        row = sequences.row(k, named=True)
        exp = expect.row(k, named=True)
        assert vocabs["users"].decode(np.array([row[schema.USER]]))[0] == exp["u"]
        assert vocabs["items"].decode(np.array(row[schema.SEQ_ITEMS])).tolist() == exp["i"]
        assert vocabs["categories"].decode(np.array(row[schema.SEQ_CATEGORIES])).tolist() == exp["c"]
        assert row[schema.SEQ_TIMES] == exp["t"] and row[schema.SEQ_EVENT_TYPES] == exp["b"]


def test_ties_keep_input_order(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("u,i,t\n5,30,2\n5,10,1\n5,20,1\n5,40,1\n6,10,0\n6,20,0\n6,30,0\n7,50,3\n")
    cfg = BuildConfig(name="x", source=SourceConfig(format="table", path=str(tmp_path / "e.csv"),
                                                    columns={"user_id": "u", "item_id": "i", "timestamp": "t"}),
                      num_eval_negatives=1, ctr=CtrConfig(mode="none"))
    build_polars(cfg, tmp_path / "b")
    sequences = JaggedSequences.read(tmp_path / "b")
    # items 10,20,30,40,50 -> dense 1..5; user 5: t=1 ties in input order (10,20,40), then 30 (t=2)
    assert sequences.user_items(0).tolist() == [1, 2, 4, 3] and sequences.user_items(1).tolist() == [1, 2, 3]


def test_leave_one_out_and_ctr_positions(taobao_build: Path) -> None:
    sequences = JaggedSequences.read(taobao_build)
    ctr = pl.from_arrow(layout.read_table(taobao_build, layout.CTR_SAMPLES))
    pos = ctr.filter(pl.col(schema.LABEL) == 1)
    lengths = dict(zip(sequences.user_ids.tolist(), sequences.lengths.tolist()))
    rows = dict(zip(sequences.user_ids.tolist(), range(sequences.num_users)))
    for split, back in (("test", 1), ("valid", 2)):
        s = pos.filter(pl.col(schema.SPLIT) == split)
        assert s.height == sum(1 for t in lengths.values() if t - back >= 1)
        for u, p, item in s.select(schema.USER, schema.PREFIX_LENGTH, schema.ITEM).iter_rows():
            assert p == lengths[u] - back  # test: index T-1 (last item), valid: index T-2
            assert sequences.user_items(rows[u])[p] == item
    train = pos.filter(pl.col(schema.SPLIT) == "train")
    for u, grp in train.group_by(schema.USER):
        t = lengths[u[0]]
        assert sorted(grp[schema.PREFIX_LENGTH].to_list()) == [t - k for k in range(3, 94, 5) if t - k >= 1][::-1]
    # each positive is followed by exactly 2 negatives with the same user and prefix
    lab = ctr[schema.LABEL].to_numpy()
    assert (lab[0::3] == 1).all() and (lab[1::3] == 0).all() and (lab[2::3] == 0).all()
    assert (ctr[schema.PREFIX_LENGTH].to_numpy()[1::3] == ctr[schema.PREFIX_LENGTH].to_numpy()[0::3]).all()


def test_target_positions_small() -> None:
    rows, split, idx = target_positions(np.array([2, 10]), 3, 94, 5, 1)
    # user 0 (T=2): only test (index 1); user 1 (T=10): train index 7 and 2, valid 8, test 9
    assert list(zip(rows.tolist(), split.tolist(), idx.tolist())) == [(0, 2, 1), (1, 0, 2), (1, 0, 7), (1, 1, 8), (1, 2, 9)]


def test_negatives_never_in_history(taobao_build: Path) -> None:
    sequences = JaggedSequences.read(taobao_build)
    hist = {int(u): set(sequences.user_items(r).tolist()) for r, u in enumerate(sequences.user_ids)}
    ev = pl.from_arrow(layout.read_table(taobao_build, layout.EVAL_NEGATIVES))
    assert ev.height == sequences.num_users
    for u, negs in ev.iter_rows():
        assert len(negs) == schema.NUM_EVAL_NEGATIVES == len(set(negs))
        assert not (set(negs) & hist[u]) and min(negs) >= 1
    ctr = pl.from_arrow(layout.read_table(taobao_build, layout.CTR_SAMPLES)).filter(pl.col(schema.LABEL) == 0)
    for u, item in ctr.select(schema.USER, schema.ITEM).iter_rows():
        assert item not in hist[u]


def test_ctr_negatives_follow_popularity(taobao_build: Path) -> None:
    sequences = JaggedSequences.read(taobao_build)
    ctr = pl.from_arrow(layout.read_table(taobao_build, layout.CTR_SAMPLES)).filter(pl.col(schema.LABEL) == 0)
    pop = np.bincount(sequences.items)
    drawn = pop[ctr[schema.ITEM].to_numpy()]
    p = pop[1:].astype(np.float64)
    expected = (p**2).sum() / p.sum()  # mean popularity of a popularity-weighted draw (2.74 here)
    assert abs(drawn.mean() - expected) < 0.1 * expected  # history exclusion shifts it only slightly
    assert drawn.mean() > 1.5 * p.mean()  # a uniform draw would give the plain mean (1.53)


def test_two_runs_byte_identical(shared_data: Path, tmp_path: Path, taobao_build: Path) -> None:
    build_polars(_cfg(shared_data), tmp_path / "again")
    first = json.loads((taobao_build / schema.MANIFEST_FILE).read_text())["files"]
    second = json.loads((tmp_path / "again" / schema.MANIFEST_FILE).read_text())["files"]
    parts = layout.num_parts(taobao_build)
    assert first == second and len(first) == 4 * parts + 3  # 3 per-user tables and the rejects in parts + 3 vocabularies
    other = tmp_path / "seed1"
    build_polars(_cfg(shared_data, seed=1), other)
    assert layout.read_table(other, layout.EVAL_NEGATIVES) != layout.read_table(taobao_build, layout.EVAL_NEGATIVES)


def test_manifest_counts(taobao_build: Path) -> None:
    m = json.loads((taobao_build / schema.MANIFEST_FILE).read_text())
    c = m["counts"]
    assert c["read"] == c["kept"] + c["rejected"] == 84_475
    assert m["vocab_sizes"] == {"users": 815, "items": 55_368, "categories": 2_914}
    assert m["length_stats"]["max"] == 539 and m["length_stats"]["median"] == 78.0
    assert c["ctr_samples"] == pl.from_arrow(layout.read_table(taobao_build, layout.CTR_SAMPLES)).height


def test_target_positions_several_eval_targets() -> None:
    """eval_targets = m: valid = indices [T-2m, T-m), test = [T-m, T); train targets stay before them."""
    rows, split, idx = target_positions(np.array([2, 10]), 5, 94, 5, 1, eval_targets=2)
    got = {(int(r), int(s), int(i)) for r, s, i in zip(rows, split, idx)}
    assert got == {(0, 2, 1), (1, 0, 5), (1, 1, 6), (1, 1, 7), (1, 2, 8), (1, 2, 9)}
    # no target index is shared between splits of one user
    for r in (0, 1):
        seen = [int(i) for rr, i in zip(rows, idx) if rr == r]
        assert len(seen) == len(set(seen))


def test_eval_targets_must_leave_room_for_train_targets() -> None:
    import pytest

    from recsys.data.build_config import CtrConfig

    with pytest.raises(ValueError, match="2\\*eval_targets\\+1"):
        CtrConfig(start=5, eval_targets=3)
