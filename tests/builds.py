"""Test helpers that write per-user tables of a build in its partitioned layout."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa

from recsys.artifacts import write_manifest
from recsys.data import layout, schema


def replace_table(build: Path, table: str, rows: pa.Table) -> None:
    """Replace `table` of an existing build with `rows`, each in the part that holds its user
    (rows stably sorted by user, as a build writes them). Checksums in the manifest go stale."""
    df = pl.from_arrow(rows).sort(schema.USER, maintain_order=True)
    parts = layout.user_parts(build, df[schema.USER].to_numpy())
    assert (parts >= 0).all(), "rows for users that are not in the build"
    layout.write_partitioned(build, table, df, parts, layout.num_parts(build))


def write_tables(build: Path, tables: dict[str, pa.Table]) -> None:
    """A one-part build of `tables` (table name -> rows) plus a manifest with its layout."""
    build.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        layout.write_part(pl.from_arrow(rows).sort(schema.USER, maintain_order=True), build / name / layout.part_name(0))
    write_manifest(build, {"layout": layout.layout_entry(1, "one part")})

