"""Model directories: the one artifact format that training writes and serving loads.

A model directory holds
    weights.safetensors   model parameters and buffers (no pickle anywhere)
    config.yaml           the resolved experiment config
    vocab/                the vocabularies of the build it was trained on
    metrics.jsonl         training log, one JSON object per line
    index.faiss           the item retrieval index (next-item models)
    manifest.json         versions, code commit, and sha256 of every file above
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
VOCAB_DIR = "vocab"


def save_weights(module: torch.nn.Module, path: str | Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(path))


def load_weights(module: torch.nn.Module, path: str | Path, strict: bool = True) -> None:
    module.load_state_dict(load_file(str(path)), strict=strict)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def code_version() -> str:
    """The git commit of the code (with '-dirty' when the tree has changes), or 'unknown'."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "numpy", "pyarrow", "polars", "ray", "faiss-cpu", "triton", "torchrec", "fastapi"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def write_manifest(directory: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write manifest.json with checksums of every file under `directory` (except itself)."""
    directory = Path(directory)
    files = {
        str(p.relative_to(directory)): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name not in (MANIFEST_FILE, MANIFEST_FILE + ".tmp")
    }
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "versions": library_versions(),
        "files": files,
        **(extra or {}),
    }
    # atomic: a reader sees the old state or the whole new manifest, never half of one
    tmp = directory / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, directory / MANIFEST_FILE)
    return manifest


def verify_manifest(directory: str | Path) -> None:
    """Raise ValueError naming the first file whose checksum does not match the manifest."""
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    for rel, digest in manifest["files"].items():
        path = directory / rel
        if not path.is_file():
            raise ValueError(f"{directory}: file listed in manifest is missing: {rel}")
        if sha256_file(path) != digest:
            raise ValueError(f"{directory}: checksum mismatch for {rel}")


def copy_vocab(build_dir: str | Path, model_dir: str | Path) -> None:
    src = Path(build_dir) / VOCAB_DIR
    dst = Path(model_dir) / VOCAB_DIR
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
