"""A parsed source before validation: what every reader returns and `recsys.data.validate` checks.

The parsed frame holds `line` (1-based source line, or row number), `raw` (the source text of the
record), `malformed` (bool: the record could not be split into its fields) and the event columns
(strings or typed). It lives beside `validate`, not in `readers`, so that the readers package can
re-export `validate` without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass
class ReadResult:
    """A parsed source before validation (see module docstring)."""

    parsed: pl.DataFrame
    has_columns: tuple[str, ...]  # event columns the source provides
