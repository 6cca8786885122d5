"""Serving test fixtures: a real redis-server on a free loopback port, store factories."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (AOF, fsync always) for the session; skips if the binary is absent."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not found (install Debian's redis-server: bash scripts/sysdeps.sh)")
    port = free_port()
    workdir: Path = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--appendonly", "yes",
         "--appendfsync", "always", "--save", "", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real synthetic build (`recsys data synth`, 40 users) and real run directories: a tiny
    SDIM (CTR) and SASRec (next-item, with index.faiss) trained for one epoch. ~7 s."""
    from recsys.data.synth import SynthConfig, generate
    from recsys.experiment import parse_experiment, run_experiment

    root = tmp_path_factory.mktemp("serving_models")
    build = root / "build"
    generate(SynthConfig(num_users=40, num_categories=5, items_per_cluster=30, length_median=40, min_length=20,
                         max_length=80, deep_offset=5, drift_window=5, min_per_interest=2), build)
    out = {"build": build}
    small = {
        "sdim": ("ctr", {"name": "sdim", "item_dim": 8, "cat_dim": 4, "num_hashes": 12, "tau": 3, "short_len": 4,
                         "attention_dim": 8, "head_hidden": [16]}),
        "dare": ("ctr", {"name": "dare", "item_dim": 8, "cat_dim": 4, "pos_dim": 4, "top_k": 4, "head_hidden": [16]}),
        "sasrec": ("next_item", {"name": "sasrec", "dim": 8, "num_blocks": 1, "max_len": 10, "dropout": 0.0}),
    }
    for name, (task, model) in small.items():
        cfg = parse_experiment({"name": name, "task": task, "data": {"build_dir": str(build)}, "model": model,
                                "train": {"epochs": 1, "batch_size": 64}, "output_dir": str(root / "runs"), "seed": 0})
        out[name] = run_experiment(cfg)
    return out
