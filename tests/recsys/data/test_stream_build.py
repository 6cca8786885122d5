"""The streaming build in one process (polars reference): bytes independent of chunking, rejects
with source file and line across files, bad paths named, a stale manifest never survives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.data import layout, schema
from recsys.data.build_config import BuildConfig
from recsys.data.build_run import build_polars
from recsys.data.readers import SourceConfig
from recsys.data.synth_taobao import BEHAVIORS, TaobaoSynthConfig, generate, user_lengths

TAOBAO = "taobao-userbehavior-sample/UserBehavior_sample.csv"


def _cfg(path: str, **kw) -> BuildConfig:
    return BuildConfig(name="t", source=SourceConfig(format="taobao_csv", path=path), **kw)


def _split_sample(shared_data: Path, tmp_path: Path) -> list[str]:
    """The sample cut into three files, with bad lines in each (file 2: a region of 3 unreadable lines)."""
    lines = (shared_data / TAOBAO).read_text().splitlines()
    parts = [lines[:30_000], lines[30_000:60_000], lines[60_000:]]
    parts[0].insert(5, "1,2,3")  # too few fields: line 6 of a.csv
    parts[1][100:100] = ["\ufffd\x00garbage", "x,y,z,pv,1", ""]  # lines 101-103 of b.csv
    parts[2].append(parts[2][0])  # a duplicate, last line of c.csv
    names = []
    for name, p in zip("abc", parts):
        (tmp_path / f"{name}.csv").write_text("\n".join(p) + "\n")
        names.append(str(tmp_path / f"{name}.csv"))
    return names


def test_chunking_does_not_change_bytes_and_rejects_name_file_and_line(shared_data: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    files = _split_sample(shared_data, tmp_path / "in")
    glob = str(tmp_path / "in" / "*.csv")
    m_big = build_polars(_cfg(glob, num_buckets=4), tmp_path / "big")
    m_small = build_polars(_cfg(glob, num_buckets=4, chunk_bytes=100_000), tmp_path / "small")
    assert m_big["files"] == m_small["files"] and len(m_big["files"]) == 4 * 4 + 3
    c = m_big["counts"]
    assert c["read"] == c["kept"] + c["rejected"] == 84_475 + 5 and c["kept"] == 84_475
    assert c["rejects_by_reason"]["malformed_line"] == 3 and c["rejects_by_reason"]["non_integer_id"] == 1
    assert c["rejects_by_reason"]["duplicate"] == 1
    rej = pl.read_parquet(tmp_path / "small" / "rejects" / "*.parquet").sort("file", "line")
    got = [(Path(f).name, line, reason) for f, line, reason in rej.select("file", "line", "reason").iter_rows()]
    n_c = len(Path(files[2]).read_text().splitlines())
    assert got == [("a.csv", 6, "malformed_line"), ("b.csv", 101, "malformed_line"), ("b.csv", 102, "non_integer_id"),
                   ("b.csv", 103, "malformed_line"), ("c.csv", n_c, "duplicate")]
    # the same rows as the whole sample in one file (the split only moved rows between files)
    one = build_polars(_cfg(str(shared_data / TAOBAO), num_buckets=4), tmp_path / "one")
    for t in layout.PER_USER_TABLES:
        assert one["files"][f"{t}/part-00000.parquet"] == m_big["files"][f"{t}/part-00000.parquet"]


def test_empty_glob_and_missing_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing-\*\.csv"):
        build_polars(_cfg(str(tmp_path / "nothing-*.csv")), tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        build_polars(_cfg(str(tmp_path / "absent.csv")), tmp_path / "out")


def test_failed_build_leaves_no_manifest(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build_polars(_cfg(str(shared_data / TAOBAO), num_buckets=2), out)
    assert (out / schema.MANIFEST_FILE).is_file()
    bad = tmp_path / "bad.csv"
    bad.write_text("garbage\n" * 10 + (shared_data / TAOBAO).read_text())
    with pytest.raises(ValueError, match="max_reject_fraction"):
        build_polars(_cfg(str(bad), num_buckets=2, max_reject_fraction=0.0), out)
    assert not (out / schema.MANIFEST_FILE).exists()  # the old manifest is gone, no new one
    with pytest.raises(FileNotFoundError, match="no manifest"):
        layout.num_parts(out)


def test_empty_parts_exist(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "two.csv"
    other = "".join(f"3,{i},7,pv,50\n" for i in range(20, 30))  # a user with ten other items, in its own part
    src.write_text("1,10,5,pv,100\n1,11,5,buy,101\n1,12,6,pv,102\n2,10,5,pv,100\n" + other)
    m = build_polars(_cfg(str(src), num_buckets=8, num_eval_negatives=2), tmp_path / "b")
    assert layout.num_parts(tmp_path / "b") == 8 and m["counts"]["sequences"] == 3
    sequences = layout.read_table(tmp_path / "b", layout.SEQUENCES)
    assert sequences[schema.USER].to_pylist() == [1, 2, 3] and sequences[schema.SEQ_ITEMS].to_pylist()[:2] == [[1, 2, 3], [1]]
    sizes = [pl.read_parquet(f).height for f in layout.table_files(tmp_path / "b", layout.SEQUENCES)]
    raw_part = layout.part_of(np.array([1, 2, 3]), 8)
    assert sum(sizes) == 3 and sizes.count(0) == 8 - len(set(raw_part.tolist()))
    for p in range(8):  # each user is in the part of its RAW id's hash
        assert sizes[p] == int((raw_part == p).sum())


def test_taobao_generator(tmp_path: Path) -> None:
    cfg = TaobaoSynthConfig(events=200_000, block_events=50_000, seed=3)
    lengths = user_lengths(cfg)
    assert lengths.sum() == 200_000 and lengths.min() >= 1 and lengths.size == 2000
    assert lengths.max() > 20 * np.median(lengths)  # long tail
    s = generate(cfg, tmp_path / "a")
    generate(cfg, tmp_path / "b")
    a = (tmp_path / "a" / "UserBehavior.csv").read_bytes()
    assert a == (tmp_path / "b" / "UserBehavior.csv").read_bytes() and s["events"] == 200_000
    df = pl.read_csv(tmp_path / "a" / "UserBehavior.csv", has_header=False, new_columns=["u", "i", "c", "b", "t"])
    assert df.height == 200_000 and df["u"].is_sorted() and set(df["b"].unique()) == set(BEHAVIORS)
    share = df["b"].value_counts(normalize=True)
    pv = share.filter(pl.col("b") == "pv")["proportion"][0]
    assert 0.885 < pv < 0.905
    assert df["t"].min() >= 1_511_539_200 and df["t"].max() < 1_512_316_800
    assert df.group_by("u").agg(pl.col("t").is_sorted().alias("s"))["s"].all()
    assert df.group_by("i").agg(pl.col("c").n_unique().alias("n"))["n"].max() == 1  # one category per item
    m = build_polars(_cfg(str(tmp_path / "a" / "UserBehavior.csv"), num_buckets=4), tmp_path / "build")
    assert m["counts"]["kept"] + m["counts"]["rejected"] == 200_000
    assert json.loads((tmp_path / "a" / "synth.json").read_text())["users"] == 2000


def test_all_rejected_is_an_error_with_reasons(tmp_path: Path) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("a,b\n1,x,3,pv,5\n")
    with pytest.raises(ValueError, match="every one of the 2 input rows was rejected.*malformed_line=1, non_integer_id=1"):
        build_polars(_cfg(str(src), max_reject_fraction=1.0), tmp_path / "out")
    assert not (tmp_path / "out" / schema.MANIFEST_FILE).exists() and not (tmp_path / "out" / "_tmp").exists()


def test_corrupt_parquet_part_is_named(tmp_path: Path) -> None:
    good = pl.DataFrame({"user_id": [1, 1, 1], "item_id": [1, 2, 3], "timestamp": [1, 2, 3]})
    good.write_parquet(tmp_path / "a.parquet")
    data = (tmp_path / "a.parquet").read_bytes()
    footer = int.from_bytes(data[-8:-4], "little") + 8
    cfg = BuildConfig(name="p", source=SourceConfig(format="table", path=str(tmp_path / "*.parquet")), num_eval_negatives=1)
    # pages zeroed, footer intact: fails in the worker's read; then the footer itself broken: fails at planning
    for broken, where in ((data[:4] + b"\x00" * (len(data) - 4 - footer) + data[-footer:], r"row groups 0\.\.0"),
                          (data[:4] + b"\x00" * (len(data) - 8) + data[-4:], "footer")):
        (tmp_path / "b.parquet").write_bytes(broken)
        with pytest.raises(ValueError, match=rf"b\.parquet: unreadable.*{where}"):
            build_polars(cfg, tmp_path / "out")
        assert not (tmp_path / "out" / schema.MANIFEST_FILE).exists()
