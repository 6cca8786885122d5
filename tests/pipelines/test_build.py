"""The Ray Data build equals the polars reference byte for byte; the CLI runs end to end.
One module-scoped local Ray session (Ray start is slow on 2 cores)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

import pytest

from recsys.data import layout, schema
from recsys.data.build_config import BuildConfig, CtrConfig
from recsys.data.readers import SourceConfig
from recsys.data.build_run import build_polars

pytestmark = pytest.mark.ray
TAOBAO = "taobao-userbehavior-sample/UserBehavior_sample.csv"
TABLES = [f"{t}/{layout.part_name(p)}" for t in layout.PER_USER_TABLES for p in range(4)] + [
    *[f"rejects/{layout.part_name(p)}" for p in range(4)], f"{schema.VOCAB_DIR}/{schema.USERS_VOCAB}", f"{schema.VOCAB_DIR}/{schema.ITEMS_VOCAB}"]


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    from pipelines.build import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def _same_files(a: Path, b: Path, names: list[str]) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_ray_equals_polars_taobao(ray_session, shared_data: Path, tmp_path: Path) -> None:
    from pipelines.build import build_ray

    # a corrupted copy, so rejects go through both paths too
    lines = (shared_data / "taobao-userbehavior-sample/UserBehavior_sample.csv").read_text().splitlines()
    lines[3] = "garbage"
    lines.append(lines[10])
    src = tmp_path / "ub.csv"
    src.write_text("\n".join(lines) + "\n")
    cfg = BuildConfig(name="tb", source=SourceConfig(format="taobao_csv", path=str(src)), num_buckets=4)
    m_ray = build_ray(cfg, tmp_path / "ray")
    m_pl = build_polars(cfg, tmp_path / "polars")
    _same_files(tmp_path / "ray", tmp_path / "polars", TABLES + [f"{schema.VOCAB_DIR}/{schema.CATEGORIES_VOCAB}"])
    assert m_ray["files"] == m_pl["files"]
    assert m_ray["counts"]["rejects_by_reason"]["malformed_line"] == 1
    assert m_ray["counts"]["rejects_by_reason"]["duplicate"] == 1
    assert m_ray["engine"] == "ray" and m_pl["engine"] == "polars"


def test_cli_ray_label_column_equals_polars(ray_session, shared_data: Path, tmp_path: Path) -> None:
    from pipelines.build import configure_cli

    cfg_path = Path(__file__).resolve().parents[2] / "configs" / "data" / "movielens-small.yaml"
    parser = argparse.ArgumentParser()
    configure_cli(parser)
    for engine in ("ray", "polars"):
        args = parser.parse_args([str(cfg_path), "--output", str(tmp_path / engine), "--engine", engine])
        assert args.func(args) == 0
    n = layout.num_parts(tmp_path / "ray")
    assert n == layout.num_parts(tmp_path / "polars") == 8
    _same_files(tmp_path / "ray", tmp_path / "polars", [f"{t}/{layout.part_name(p)}" for t in layout.PER_USER_TABLES
                                                         for p in range(n)] + TABLES[-3:])
    m = json.loads((tmp_path / "ray" / schema.MANIFEST_FILE).read_text())
    assert m["counts"]["read"] == m["counts"]["kept"] == 100_836
    # movielens-small.yaml: eval_targets = 10 test impressions for each of the 610 users (all have >= 20 ratings)
    assert m["counts"]["ctr_samples_by_split"]["test"] == 610 * 10
    # valid = indices [T-20, T-10); index 0 has no history (min_history 1), so users with exactly 20 ratings give 9
    lengths = np.diff(layout.read_table(tmp_path / "ray", layout.SEQUENCES)[schema.SEQ_ITEMS].combine_chunks().offsets.to_numpy())
    assert m["counts"]["ctr_samples_by_split"]["valid"] == 610 * 10 - int((lengths == 20).sum())


def test_config_placeholders_and_errors(tmp_path: Path) -> None:
    from pipelines.build import configure_cli
    from recsys.data.build_config import load_build_config, resolved_source
    from recsys.settings import shared_data_dir

    cfg = load_build_config(Path(__file__).resolve().parents[2] / "configs" / "data" / "games.yaml")
    assert resolved_source(cfg).path == str(shared_data_dir() / "amazon-games-sasrec" / "Video.txt")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsource: {format: taobao_csv, path: /nonexistent.csv}\nctr: {mode: popularity_negatives, strat: 3}\n")
    parser = argparse.ArgumentParser()
    configure_cli(parser)
    args = parser.parse_args([str(bad), "--engine", "polars"])
    assert args.func(args) == 2  # unknown key 'strat' named by the config loader
    with pytest.raises(ValueError, match="ctr.start"):
        CtrConfig(start=1)


def test_ray_failure_names_the_problem_and_leaves_no_manifest(ray_session, shared_data: Path, tmp_path: Path) -> None:
    import polars as pl

    from pipelines.build import build_ray

    out = tmp_path / "out"
    good = BuildConfig(name="tb", source=SourceConfig(format="taobao_csv", path=str(shared_data / TAOBAO)), num_buckets=2)
    build_ray(good, out)
    assert (out / schema.MANIFEST_FILE).is_file()
    # the second file lacks the mapped item column: its worker fails, the error names file and column
    pl.DataFrame({"u": [1, 2], "i": [3, 4], "t": [5, 6]}).write_parquet(tmp_path / "a.parquet")
    pl.DataFrame({"u": [1, 2], "item": [3, 4], "t": [5, 6]}).write_parquet(tmp_path / "b.parquet")
    bad = BuildConfig(name="x", source=SourceConfig(format="table", path=str(tmp_path / "*.parquet"),
                                                    columns={"user_id": "u", "item_id": "i", "timestamp": "t"}))
    with pytest.raises(ValueError, match=r"b\.parquet: missing required column\(s\) \['i'\]"):
        build_ray(bad, out)
    assert sorted(p.name for p in out.iterdir()) == []  # old build's manifest and tables gone, no partial new one
