"""`recsys data fetch ml-100k`: checksum, cache hit, fallback order (network-free variants use
stand-in getters; one test does the real wheel download when pip can reach an index)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.data import fetch
from recsys.data.readers import SourceConfig, read_events


def _fail(_: float) -> bytes:
    raise OSError("unreachable")


def test_checksum_mismatch_is_an_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fetch, "_from_grouplens", _fail)
    monkeypatch.setattr(fetch, "_from_recbole_wheel", lambda t: b"user_id:token\n1\n")
    with pytest.raises(fetch.FetchError, match="sha256"):
        fetch.fetch_ml_100k(tmp_path)
    assert not (tmp_path / "ml-100k" / fetch.ML_100K_FILE).exists()


def test_real_fetch_then_cache_hit(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fetch, "_from_grouplens", _fail)  # keep the test off the network host
    try:
        path = fetch.fetch_ml_100k(tmp_path, timeout=5)
    except fetch.FetchError as exc:
        pytest.skip(f"no package index reachable for pip download: {exc}")
    v = read_events(SourceConfig(format="recbole_inter", path=str(path)), max_reject_fraction=0.0)
    assert (v.read, v.events["user_id"].n_unique(), v.events["item_id"].n_unique()) == (100_000, 943, 1_682)
    calls = []
    monkeypatch.setattr(fetch, "_from_recbole_wheel", lambda t: calls.append(t) or b"")
    assert fetch.fetch_ml_100k(tmp_path) == path and calls == []  # cache hit: nothing downloaded
    path.write_bytes(path.read_bytes()[:-10])  # a damaged cache is fetched again
    with pytest.raises(fetch.FetchError):
        fetch.fetch_ml_100k(tmp_path)
