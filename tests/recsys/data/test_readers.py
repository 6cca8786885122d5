"""Each reader on the real files in the shared data folder: row, user and item counts equal the
README table there (and the MovieLens variants on format conversions of the real ratings.csv)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys.data import schema
from recsys.data.readers import SourceConfig, read_events

# (format, path, times_path, rows, users, items) from shared/data/README.md
REAL = [
    ("movielens_csv", "movielens-latest-small/ratings.csv", None, 100_836, 610, 9_724),
    ("sasrec_pairs", "amazon-games-sasrec/Video.txt", None, 287_107, 31_013, 23_715),
    ("sequence_lines", "amazon-beauty/items.txt", "amazon-beauty/times.txt", 198_502, 22_363, 12_101),
    ("sequence_lines", "amazon-toys/sequences.txt", None, 167_597, 19_412, 11_924),
    ("taobao_csv", "taobao-userbehavior-sample/UserBehavior_sample.csv", None, 84_475, 815, 55_368),
]


@pytest.mark.parametrize("fmt,rel,times,rows,users,items", REAL, ids=[r[1].split("/")[0] for r in REAL])
def test_reader_counts_match_readme(shared_data: Path, fmt, rel, times, rows, users, items) -> None:
    src = SourceConfig(format=fmt, path=str(shared_data / rel), times_path=str(shared_data / times) if times else None)
    v = read_events(src, max_reject_fraction=0.0)
    e = v.events
    assert (v.read, v.kept, v.rejected) == (rows, rows, 0)
    assert e[schema.USER].n_unique() == users
    assert e[schema.ITEM].n_unique() == items
    for col in schema.REQUIRED_EVENT_COLUMNS:
        assert e[col].dtype == pl.Int64 and e[col].null_count() == 0


def test_taobao_categories_and_event_types(shared_data: Path) -> None:
    v = read_events(SourceConfig(format="taobao_csv", path=str(shared_data / "taobao-userbehavior-sample/UserBehavior_sample.csv")))
    assert v.events[schema.CATEGORY].n_unique() == 2_914
    assert set(v.events[schema.EVENT_TYPE].unique()) == {"pv", "cart", "fav", "buy"}
    first = v.events.row(0, named=True)
    assert (first[schema.USER], first[schema.ITEM], first[schema.CATEGORY], first[schema.TIME]) == (1, 2268318, 2520377, 1511544070)


def test_sasrec_pairs_timestamp_is_order_index(shared_data: Path) -> None:
    v = read_events(SourceConfig(format="sasrec_pairs", path=str(shared_data / "amazon-games-sasrec/Video.txt")))
    u1 = v.events.filter(pl.col(schema.USER) == 1)
    assert u1[schema.TIME].to_list() == list(range(u1.height))
    assert u1[schema.ITEM].head(3).to_list() == [6393, 13504, 14087]  # first lines of Video.txt


def test_sequence_lines_with_times_file(shared_data: Path) -> None:
    d = shared_data / "amazon-beauty"
    v = read_events(SourceConfig(format="sequence_lines", path=str(d / "items.txt"), times_path=str(d / "times.txt")))
    u1 = v.events.filter(pl.col(schema.USER) == 1)
    assert u1[schema.ITEM].to_list() == [7873, 6846, 4585, 1, 5406]
    assert u1[schema.TIME].to_list() == [1318896000, 1318896000, 1328140800, 1391040000, 1391040000]


def test_movielens_label_from_rating(shared_data: Path) -> None:
    src = SourceConfig(format="movielens_csv", path=str(shared_data / "movielens-latest-small/ratings.csv"), rating_threshold=4)
    e = read_events(src).events
    raw = pl.read_csv(shared_data / "movielens-latest-small/ratings.csv")
    assert e[schema.LABEL].dtype == pl.Int8
    assert int(e[schema.LABEL].cast(pl.Int64).sum()) == int((raw["rating"] >= 4).sum())


@pytest.fixture(scope="module")
def ml_small(shared_data: Path) -> pl.DataFrame:
    return pl.read_csv(shared_data / "movielens-latest-small/ratings.csv")


@pytest.mark.parametrize("fmt", ["movielens_udata", "movielens_dat", "recbole_inter", "table_parquet", "table_csv"])
def test_other_formats_on_converted_real_ratings(ml_small: pl.DataFrame, tmp_path: Path, fmt: str) -> None:
    """u.data, ratings.dat, RecBole .inter and mapped parquet/csv written from the real ratings.csv."""
    rows = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in ml_small.iter_rows()]
    cols = None
    if fmt == "movielens_udata":
        path = tmp_path / "u.data"
        path.write_text("\n".join(rows) + "\n")
    elif fmt == "movielens_dat":
        path = tmp_path / "ratings.dat"
        path.write_text("\n".join(r.replace("\t", "::") for r in rows) + "\n")
    elif fmt == "recbole_inter":
        path = tmp_path / "ml.inter"
        path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(rows) + "\n")
    else:
        renamed = ml_small.rename({"userId": "uid", "movieId": "iid", "timestamp": "ts"})
        path = tmp_path / ("t.parquet" if fmt == "table_parquet" else "t.csv")
        renamed.write_parquet(path) if fmt == "table_parquet" else renamed.write_csv(path)
        cols = {"user_id": "uid", "item_id": "iid", "timestamp": "ts"}
    src = SourceConfig(format="table" if fmt.startswith("table") else fmt, path=str(path), columns=cols,
                       rating_threshold=None if cols else 4)
    v = read_events(src, max_reject_fraction=0.0)
    assert (v.read, v.kept) == (100_836, 100_836)
    assert v.events[schema.USER].n_unique() == 610 and v.events[schema.ITEM].n_unique() == 9_724
    assert v.events[schema.TIME].to_list() == ml_small["timestamp"].to_list()
    if not cols:
        assert int(v.events[schema.LABEL].cast(pl.Int64).sum()) == int((ml_small["rating"] >= 4).sum())


def test_table_reader_missing_mapped_column_names_it(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pl.DataFrame({"uid": [1], "iid": [2]}).write_parquet(path)
    with pytest.raises(ValueError, match="'ts'"):
        read_events(SourceConfig(format="table", path=str(path), columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts"}))
