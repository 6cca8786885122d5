"""Loading a run directory for serving, with the checks that make it safe to load.

Manifest rule: a model directory must hold `manifest.json` listing, with its sha256, every file
the loader opens: config.yaml, weights.safetensors, every file under vocab/, and index.faiss for
a retrieval model that has one. A missing or empty manifest, an unlisted file, a listed file that
is missing, or a checksum mismatch refuses the directory, naming the file (relative to the model
directory). Errors raised here (`ModelDirError`) never contain the directory's absolute path, so
the API can return them to a client as they are.

History cap: a CTR model is served on at most the number of behaviours it was trained with (the
run's config.yaml `ctr.max_history`, or recsys/tasks/ctr.py's default for runs written before
that section existed), unless the serving settings say otherwise (`max_history`, policed by
`history_above_trained`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from recsys.artifacts import CONFIG_FILE, INDEX_FILE, MANIFEST_FILE, VOCAB_DIR, WEIGHTS_FILE, sha256_file
from recsys.experiment import ExperimentConfig, LoadedRun, load_run
from recsys.tasks.ctr import DEFAULT_MAX_HISTORY

log = logging.getLogger(__name__)


class ModelDirError(ValueError):
    """A model directory that cannot be served; the message names the problem without its path."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    directory: str


def read_manifest(run_dir: Path) -> dict[str, str]:
    """The manifest's {relative path: sha256}; refused when absent, unreadable or empty."""
    path = run_dir / MANIFEST_FILE
    if not path.is_file():
        raise ModelDirError(f"model_dir: no {MANIFEST_FILE} (the checksums of the model files are required)")
    try:
        files = json.loads(path.read_text()).get("files")
    except (ValueError, AttributeError, UnicodeDecodeError):
        raise ModelDirError(f"model_dir: {MANIFEST_FILE} is not a JSON object with a 'files' map") from None
    if not isinstance(files, dict) or not files or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise ModelDirError(f"model_dir: {MANIFEST_FILE} lists no files (a 'files' map of path -> sha256 is required)")
    return files


def opened_files(run_dir: Path, with_index: bool) -> list[str]:
    """The files (relative paths) the loader opens in a run directory."""
    out = [CONFIG_FILE, WEIGHTS_FILE]
    vocab = run_dir / VOCAB_DIR
    if vocab.is_dir():
        out += sorted(str(p.relative_to(run_dir)) for p in vocab.rglob("*") if p.is_file() or p.is_symlink())
    if with_index and (run_dir / INDEX_FILE).exists():
        out.append(INDEX_FILE)
    return out


def verify_model_dir(run_dir: Path, with_index: bool) -> dict[str, str]:
    """Check the manifest rule (module docstring); returns the manifest's files."""
    if not run_dir.is_dir():
        raise ModelDirError("model_dir: not a directory")
    files = read_manifest(run_dir)
    for rel in opened_files(run_dir, with_index):
        if rel not in files:
            raise ModelDirError(f"model_dir: {rel} is not listed in {MANIFEST_FILE}")
    for rel, digest in files.items():
        path = run_dir / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ModelDirError(f"model_dir: {MANIFEST_FILE} lists a path outside the directory: {rel!r}")
        if not path.is_file():
            raise ModelDirError(f"model_dir: {rel} is listed in {MANIFEST_FILE} but missing")
        if sha256_file(path) != digest:
            raise ModelDirError(f"model_dir: checksum mismatch for {rel}")
    return files


def load_checked_run(run_dir: str | Path, task: str) -> tuple[LoadedRun, ModelInfo]:
    """The run, loaded after the manifest rule and checked to be a `task` model."""
    run_dir = Path(run_dir)
    files = verify_model_dir(run_dir, with_index=task == "next_item")
    try:
        loaded = load_run(run_dir, verify=False)  # verified above; safetensors weights, no pickle
    except Exception as exc:  # noqa: BLE001 - logged with its path; the client gets the type only
        log.warning("loading %s failed: %s", run_dir, exc)
        raise ModelDirError(f"model_dir: the run could not be loaded ({type(exc).__name__}; details in the server log)") from None
    got = loaded.config.task
    if got != task:
        raise ModelDirError(f"model_dir: holds a {got!r} model, expected a {task!r} model")
    loaded.model.eval()
    name = str(loaded.config.model_cfg().name)
    return loaded, ModelInfo(name=name, version=files[WEIGHTS_FILE][:12], directory=str(run_dir))


def trained_max_history(cfg: ExperimentConfig | Any) -> int:
    """The CTR history cap a run was trained with: its config's `ctr.max_history` when recorded,
    else the CTR task's default (runs written before the `ctr:` section)."""
    section = getattr(cfg, "ctr", None)
    value = getattr(section, "max_history", None)
    return int(value) if value is not None else DEFAULT_MAX_HISTORY


def serving_max_history(configured: int | None, trained: int, policy: Literal["refuse", "warn"]) -> int:
    """The history window to serve with: `configured`, or the trained cap when None. Above the
    trained cap, `policy` refuses (ModelDirError naming max_history) or logs a warning."""
    if configured is None:
        return trained
    if configured > trained:
        msg = (f"max_history: {configured} is above the {trained} behaviours the model was trained with "
               "(positions and attention beyond them were never seen in training)")
        if policy == "refuse":
            raise ModelDirError(f"{msg}; lower max_history, or set history_above_trained: warn to serve anyway")
        log.warning("%s; serving anyway (history_above_trained: warn)", msg)
    return configured
