"""Rejects accounting on deliberately corrupted copies of real files: every bad row is counted
under its reason and written out, read = kept + rejected, and the limits fail loudly."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys.data import schema
from recsys.data.readers import SourceConfig, read_events
from recsys.data.validate import RejectFractionError

TAOBAO = "taobao-userbehavior-sample/UserBehavior_sample.csv"


def _corrupt(shared_data: Path, tmp_path: Path) -> tuple[Path, dict[str, list[int]], int]:
    lines = (shared_data / TAOBAO).read_text().splitlines()[:2000]
    bad: dict[str, list[int]] = {r: [] for r in ("malformed_line", "non_integer_id", "null_timestamp",
                                                  "negative_timestamp", "duplicate")}
    out = list(lines)
    out[10] = "1,2,3"; bad["malformed_line"].append(11)
    out[20] = ""; bad["malformed_line"].append(21)
    out[30] = out[30].replace(out[30].split(",")[1], "abc", 1); bad["non_integer_id"].append(31)
    f = out[40].split(","); f[0] = "1.5"; out[40] = ",".join(f); bad["non_integer_id"].append(41)
    f = out[50].split(","); f[2] = ""; out[50] = ",".join(f); bad["non_integer_id"].append(51)  # category
    f = out[60].split(","); f[4] = ""; out[60] = ",".join(f); bad["null_timestamp"].append(61)
    f = out[70].split(","); f[4] = "soon"; out[70] = ",".join(f); bad["null_timestamp"].append(71)
    f = out[80].split(","); f[4] = "-5"; out[80] = ",".join(f); bad["negative_timestamp"].append(81)
    out.insert(100, out[99]); bad["duplicate"].append(101)  # exact copy of line 100
    out.append(out[5]); bad["duplicate"].append(len(out))
    path = tmp_path / "corrupt.csv"
    path.write_text("\n".join(out) + "\n")
    return path, bad, len(out)


def test_rejects_counted_per_reason(shared_data: Path, tmp_path: Path) -> None:
    path, bad, n = _corrupt(shared_data, tmp_path)
    v = read_events(SourceConfig(format="taobao_csv", path=str(path)), max_reject_fraction=0.01)
    assert v.read == n == v.kept + v.rejected
    for reason, lines in bad.items():
        assert v.counts[reason] == len(lines), reason
        got = v.rejects.filter(pl.col("reason") == reason)["line"].to_list()
        assert got == lines, reason
    raw = dict(zip(v.rejects["line"].to_list(), v.rejects["raw"].to_list()))
    assert raw[11] == "1,2,3" and raw[21] == ""
    assert v.rejects.columns == ["reason", "line", "raw"]
    assert v.events["line"].is_in(v.rejects["line"].implode()).sum() == 0  # rejected lines not kept


def test_reject_fraction_limit(shared_data: Path, tmp_path: Path) -> None:
    path, bad, n = _corrupt(shared_data, tmp_path)
    with pytest.raises(RejectFractionError, match="malformed_line=2"):
        read_events(SourceConfig(format="taobao_csv", path=str(path)), max_reject_fraction=0.001)


def test_missing_required_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("userId,movieId,rating\n1,2,4.0\n")
    with pytest.raises(ValueError, match="timestamp"):
        read_events(SourceConfig(format="movielens_csv", path=str(path)))
    inter = tmp_path / "x.inter"
    inter.write_text("user_id:token\ttimestamp:float\n1\t5\n")
    with pytest.raises(ValueError, match="item_id"):
        read_events(SourceConfig(format="recbole_inter", path=str(inter)))


def test_times_file_mismatch_is_malformed(tmp_path: Path) -> None:
    (tmp_path / "items.txt").write_text("1 10 11 12\n2 10 13\n3 14\n")
    (tmp_path / "times.txt").write_text("1 5 6 7\n2 5\n4 9\n")  # line 2 too short, line 3 other user
    v = read_events(SourceConfig(format="sequence_lines", path=str(tmp_path / "items.txt"),
                                 times_path=str(tmp_path / "times.txt")))
    assert (v.read, v.kept, v.counts["malformed_line"]) == (5, 3, 2)
    assert v.rejects["line"].to_list() == [2, 3]
    assert v.events.filter(pl.col(schema.USER) == 1)[schema.TIME].to_list() == [5, 6, 7]


def test_bad_rating_is_bad_label(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text("1\t2\t5\t100\n1\t3\tx\t101\n")
    v = read_events(SourceConfig(format="movielens_udata", path=str(path), rating_threshold=4))
    assert v.counts["bad_label"] == 1 and v.events[schema.LABEL].to_list() == [1]


def test_label_outside_zero_one_is_bad_label(tmp_path: Path) -> None:
    """A mapped label column must hold clicks (0/1): 2, -1 and 300 are counted rejects, not kept or cast away."""
    path = tmp_path / "events.csv"
    path.write_text("u,i,t,clk\n1,2,10,1\n1,3,11,0\n1,4,12,2\n1,5,13,-1\n1,6,14,300\n")
    cfg = SourceConfig(format="table", path=str(path),
                       columns={"user_id": "u", "item_id": "i", "timestamp": "t", "label": "clk"})
    v = read_events(cfg)
    assert v.read == 5 and v.counts["bad_label"] == 3
    assert v.events[schema.LABEL].to_list() == [1, 0]
    assert sorted(v.rejects["line"].to_list()) == [3, 4, 5]  # data rows, 1-based (header not counted)
