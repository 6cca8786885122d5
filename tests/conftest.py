"""Shared test set-up: pinned threads (thread contention on the 2-core CI machine made an
embedding forward 20x slower), deterministic seeds, and the real-data location."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from pathlib import Path

import pytest
import torch

from recsys.settings import SHARED_DATA_ENV, shared_data_dir

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public data folder; tests that need it skip with a reason naming the setting."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set {SHARED_DATA_ENV} to the shared/data folder)")
    return path
