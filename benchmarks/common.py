"""What every benchmark shares: the repository root, "make sure this build exists", and the
timing loop (median seconds after warm-up), so each benchmark script keeps only its own protocol."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
#: a build is complete when its manifest exists: both build paths and the synth generator write
#: manifest.json last; one without a `layout` entry is from the old single-file layout and is rebuilt
MANIFEST = "manifest.json"


def _manifest(out: Path) -> dict:
    """The build's manifest, or {} when there is none or it predates the partitioned layout."""
    path = out / MANIFEST
    data = json.loads(path.read_text()) if path.is_file() else {}
    return data if "layout" in data else {}


def ensure_build(data_config: str | Path, out: str | Path) -> Path:
    """Build `data_config` (a configs/data/*.yaml) into `out` with the polars engine unless a
    complete build (its manifest) is already there; returns `out`."""
    out = Path(out)
    if not _manifest(out):
        subprocess.run([sys.executable, "-m", "recsys.cli", "data", "build", str(data_config), "--engine", "polars",
                        "--output", str(out)], check=True, cwd=ROOT)
    return out


def ensure_dataset_build(name: str, out: str | Path | None = None) -> Path:
    """The build of configs/data/<name>.yaml, by default in runs/<name>/build."""
    return ensure_build(ROOT / "configs" / "data" / f"{name}.yaml", out or ROOT / "runs" / name / "build")


def ensure_synth(synth_config: str | Path, out: str | Path) -> Path:
    """Generate the planted data of `synth_config` into `out` unless it is there, built from the same
    config (the manifest records the config); returns `out`."""
    from recsys.config import load_yaml
    from recsys.data.synth import SynthConfig, generate

    out = Path(out)
    cfg = load_yaml(synth_config, SynthConfig)
    if _manifest(out).get("config") != cfg.model_dump(mode="json"):
        generate(cfg, out)
    return out


def median_seconds(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    """Median wall seconds of `fn()` over `reps` calls after `warmup` untimed calls."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(statistics.median(times))


def relative(path: Path) -> str:
    """`path` relative to the repository root when inside it (for protocols and commands)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
