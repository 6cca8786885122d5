"""`recsys data fetch ml-100k`: get MovieLens-100K into the data cache, verified by checksum.

Source order: GroupLens (`ml-100k.zip`, short timeout); when that host cannot be reached, the PyPI
wheel `recbole==1.2.1` (downloaded with `pip download --no-deps` into a temporary folder and read
as a zip: recbole is never installed or imported), which carries the same 100,000 ratings as
`recbole/dataset_example/ml-100k/ml-100k.inter`.

Either way the cached file is `<cache>/ml-100k/ml-100k.inter` in RecBole's format (header
`user_id:token item_id:token rating:float timestamp:float`, then the tab-separated lines of
GroupLens' `u.data`), and its sha256 must equal ML_100K_SHA256 (observed on the wheel's file; the
GroupLens `u.data` body plus that header gives the same bytes). A second call finds the verified
file in the cache and downloads nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from recsys.settings import data_cache_dir

log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
INTER_HEADER = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ML_100K_FILE = "ml-100k.inter"
# sha256 of ml-100k.inter as observed in recbole-1.2.1-py3-none-any.whl (100,000 ratings + header).
ML_100K_SHA256 = "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"
DATASETS = ("ml-100k",)


class FetchError(RuntimeError):
    """The dataset could not be obtained or failed verification."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _from_grouplens(timeout: float) -> bytes:
    with urllib.request.urlopen(GROUPLENS_URL, timeout=timeout) as resp:  # noqa: S310 - fixed https URL
        blob = resp.read()
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        body = zf.read("ml-100k/u.data")
    return INTER_HEADER + body


def _from_recbole_wheel(timeout: float) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, RECBOLE_WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 120))
        if proc.returncode != 0:
            raise FetchError(f"pip download {RECBOLE_WHEEL} failed: {proc.stderr.strip()[-500:]}")
        wheels = sorted(Path(tmp).glob("recbole-*.whl"))
        if not wheels:
            raise FetchError(f"pip download {RECBOLE_WHEEL} produced no wheel in {tmp}")
        with zipfile.ZipFile(wheels[0]) as zf:
            return zf.read(RECBOLE_MEMBER)


def fetch_ml_100k(data_dir: str | Path | None = None, timeout: float = 10.0) -> Path:
    """Return the path of the verified `ml-100k.inter`, downloading it on a cache miss."""
    root = Path(data_dir) if data_dir is not None else data_cache_dir()
    target = root / "ml-100k" / ML_100K_FILE
    if target.is_file():
        digest = _sha256(target.read_bytes())
        if digest == ML_100K_SHA256:
            log.info("ml-100k: cache hit %s (sha256 verified)", target)
            return target
        log.warning("ml-100k: cached file %s has sha256 %s, expected %s; fetching again", target, digest, ML_100K_SHA256)
    errors = []
    data = None
    for name, getter in (("GroupLens", _from_grouplens), ("PyPI wheel " + RECBOLE_WHEEL, _from_recbole_wheel)):
        try:
            log.info("ml-100k: fetching from %s", name)
            data = getter(timeout)
        except (OSError, zipfile.BadZipFile, KeyError, subprocess.SubprocessError, FetchError) as exc:
            log.warning("ml-100k: %s unavailable: %s", name, exc)
            errors.append(f"{name}: {exc}")
            continue
        digest = _sha256(data)
        if digest != ML_100K_SHA256:
            errors.append(f"{name}: sha256 {digest} != expected {ML_100K_SHA256}")
            log.warning("ml-100k: %s gave a file with the wrong checksum", name)
            data = None
            continue
        break
    if data is None:
        raise FetchError("could not fetch ml-100k:\n  " + "\n  ".join(errors))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(target)
    log.info("ml-100k: wrote %s (sha256 %s)", target, ML_100K_SHA256)
    return target


def _handler(args: argparse.Namespace) -> int:
    try:
        path = fetch_ml_100k(args.data_dir, timeout=args.timeout)
    except FetchError as exc:
        print(f"recsys data fetch: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.description = "Download a public dataset into the data cache (verified by sha256)."
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--data-dir", default=None, help="cache folder (default: $RECSYS_DATA_DIR or ./data)")
    parser.add_argument("--timeout", type=float, default=10.0, help="network timeout in seconds for GroupLens")
    parser.set_defaults(func=_handler)
