"""Readers: one per source format, each producing events in the contract of recsys/data/schema.py
plus the rows it rejected. `read_events(source, max_reject_fraction)` is the entry point."""

from __future__ import annotations

from typing import Callable

from recsys.data.readers import movielens, recbole, sequences, table, taobao
from recsys.data.parsed import ReadResult
from recsys.data.readers.base import FORMATS, SourceConfig
from recsys.data.validate import Validated, validate

READERS: dict[str, Callable[[SourceConfig], ReadResult]] = {
    "movielens_udata": movielens.read_udata,
    "movielens_csv": movielens.read_csv,
    "movielens_dat": movielens.read_dat,
    "recbole_inter": recbole.read_inter,
    "sasrec_pairs": sequences.read_pairs,
    "sequence_lines": sequences.read_lines_per_user,
    "taobao_csv": taobao.read_userbehavior,
    "table": table.read_table,
}
assert set(READERS) == set(FORMATS)


def parse_source(source: SourceConfig) -> ReadResult:
    return READERS[source.format](source)


def read_events(source: SourceConfig, max_reject_fraction: float = 1.0) -> Validated:
    """Read and validate a source: kept events (with `line` and input `order`) and rejects."""
    return validate(parse_source(source), max_reject_fraction=max_reject_fraction, source=source.path)


__all__ = ["READERS", "ReadResult", "SourceConfig", "Validated", "parse_source", "read_events"]
