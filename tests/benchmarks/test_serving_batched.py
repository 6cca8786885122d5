"""benchmarks/serving_batched.py: the store it fills and the rows it derives (the HTTP runs themselves
are exercised by running the benchmark; see benchmarks/README.md "GPU session")."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from benchmarks import serving_batched as sb
from benchmarks.results import command_line
from serving.store.sqlite import SQLiteStore


def test_fill_users_gives_each_user_the_whole_history(tmp_path: Path) -> None:
    users = sb.fill_users(tmp_path / "s.sqlite3", users=3, length=12_000, seed=0)
    assert users == [sb.FIRST_USER, sb.FIRST_USER + 1, sb.FIRST_USER + 2]
    store = SQLiteStore(tmp_path / "s.sqlite3", max_history=20_000)
    try:
        hist = [store.history(u) for u in users]
    finally:
        store.close()
    assert [len(h) for h in hist] == [12_000] * 3  # above the store's default 10,000-event window
    assert not (hist[0].items == hist[1].items).all()


def test_rows_put_the_targets_in_ratio() -> None:
    args = argparse.Namespace(client="httpx", model="dare", cands=512, users=8, length=8192, concurrency=8,
                              max_batch=16, repeats=3, seconds=5.0, warmup_seconds=2.0, device="cpu")
    on = [{"p50_ms": 4.0, "p99_ms": p, "rps": r, "per_call": 6.0} for p, r in ((8.0, 1000), (9.0, 1200), (30.0, 900))]
    off = [{"p50_ms": 20.0, "p99_ms": 40.0, "rps": r, "per_call": 6.0} for r in (200, 250, 190)]
    p99, rps, p99_off = sb.rows_of(args, on, off, "cmd")
    assert (p99["value"], p99["reference"], p99["ratio"]) == (9.0, 10.0, 0.9)  # medians over repeats
    assert (rps["value"], rps["reference"]) == (1000, 200) and rps["ratio"] == pytest.approx(5.0)
    assert p99_off["value"] == 40.0 and p99_off["ratio"] is None
    assert "8 users each L=8192" in p99["protocol"] and p99["command"] == "cmd"


def test_command_line_drops_out_and_names_the_device_session_form() -> None:
    argv = ["--device", "cuda", "--out", "/x/y.json", "--seconds", "3"]
    assert command_line("benchmarks.serving_batched", argv) == (
        "TRITON_INTERPRET=0 PYTHONPATH=. python3 -m benchmarks.serving_batched --device cuda --seconds 3")
    assert command_line("benchmarks.x", ["--out=/a.json", "--k", "2"]) == ".venv/bin/python -m benchmarks.x --k 2"
