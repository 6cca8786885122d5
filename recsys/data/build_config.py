"""Typed config of `recsys data build` (YAML, see configs/data/*.yaml).

Paths may contain `{shared_data}` (recsys.settings.shared_data_dir(), i.e. $RECSYS_SHARED_DATA) and
`{data_cache}` (recsys.settings.data_cache_dir(), i.e. $RECSYS_DATA_DIR) placeholders; they are
resolved here, so no other module reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import model_validator

from recsys.config import StrictModel, load_yaml
from recsys.data import schema
from recsys.data.readers.base import SourceConfig
from recsys.settings import data_cache_dir, shared_data_dir


class CtrConfig(StrictModel):
    """CTR sample settings (see recsys/data/ctr_samples.py for the exact positions)."""

    mode: Literal["popularity_negatives", "label_column", "none"] = "popularity_negatives"
    start: int = 3  # train targets at index T-k for k in range(start, stop, step)
    stop: int = 94
    step: int = 5
    min_history: int = 1  # a target needs at least this many earlier events
    negatives_per_positive: int = 2
    #: targets per user in each of valid and test: valid = indices [T-2m, T-m), test = [T-m, T).
    #: m = 1 is DARE's protocol; m > 1 gives every user several impressions so GAUC is defined
    #: in label_column mode (one labelled event per user has no per-user AUC).
    eval_targets: int = 1

    @model_validator(mode="after")
    def _check(self) -> "CtrConfig":
        if self.eval_targets < 1:
            raise ValueError("ctr.eval_targets must be >= 1")
        if self.start < 2 * self.eval_targets + 1:
            raise ValueError(f"ctr.start must be >= 2*eval_targets+1 = {2 * self.eval_targets + 1} "
                             "(the last 2*eval_targets indices are the valid and test targets)")
        if self.step < 1 or self.stop <= self.start:
            raise ValueError("ctr.step must be >= 1 and ctr.stop > ctr.start")
        if self.min_history < 0 or self.negatives_per_positive < 1:
            raise ValueError("ctr.min_history must be >= 0 and ctr.negatives_per_positive >= 1")
        return self


class BuildConfig(StrictModel):
    name: str
    source: SourceConfig
    output_dir: str = "runs/{name}/build"
    seed: int = 0
    max_reject_fraction: float = 0.01
    num_eval_negatives: int = schema.NUM_EVAL_NEGATIVES
    ctr: CtrConfig = CtrConfig()
    num_buckets: int = 8  # users are hashed (raw id) into this many buckets = output parts (layout.py)
    chunk_rows: int = 2_000_000  # parquet input: row groups are read in runs of about this many rows
    chunk_bytes: int = 64 << 20  # taobao_csv input: byte ranges of about this size (cut at line starts)

    @model_validator(mode="after")
    def _check(self) -> "BuildConfig":
        if not 0.0 <= self.max_reject_fraction <= 1.0:
            raise ValueError("max_reject_fraction must be in [0, 1]")
        if self.num_buckets < 1 or self.num_eval_negatives < 1:
            raise ValueError("num_buckets and num_eval_negatives must be >= 1")
        if self.chunk_rows < 1 or self.chunk_bytes < 1:
            raise ValueError("chunk_rows and chunk_bytes must be >= 1")
        return self


def resolve_path(path: str, name: str = "") -> Path:
    """Expand {shared_data}, {data_cache} and {name} in a configured path."""
    text = path.replace("{shared_data}", str(shared_data_dir())).replace("{data_cache}", str(data_cache_dir()))
    return Path(text.replace("{name}", name)).expanduser()


def resolved_source(cfg: BuildConfig) -> SourceConfig:
    """The source with every path placeholder resolved."""
    update = {"path": str(resolve_path(cfg.source.path, cfg.name))}
    if cfg.source.times_path is not None:
        update["times_path"] = str(resolve_path(cfg.source.times_path, cfg.name))
    return cfg.source.model_copy(update=update)


def load_build_config(path: str | Path) -> BuildConfig:
    return load_yaml(path, BuildConfig)
