"""Where the project finds data. One setting each, read from the environment (no global state:
call these functions where a path is needed)."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA_ENV = "RECSYS_SHARED_DATA"
DATA_DIR_ENV = "RECSYS_DATA_DIR"


def shared_data_dir() -> Path:
    """Real public data for tests and benchmarks (`$RECSYS_SHARED_DATA`, default ../shared/data
    relative to the repository root)."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return Path(os.environ.get(SHARED_DATA_ENV, str(default))).expanduser()


def data_cache_dir() -> Path:
    """Where fetched datasets (e.g. MovieLens-100K) are cached (`$RECSYS_DATA_DIR`, default
    ./data under the repository root)."""
    default = Path(__file__).resolve().parents[1] / "data"
    return Path(os.environ.get(DATA_DIR_ENV, str(default))).expanduser()
