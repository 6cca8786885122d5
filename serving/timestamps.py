"""The clock-skew rule for client timestamps (/v1/events and recent_events in /v1/score)."""

from __future__ import annotations

import time

from serving.errors import FieldError


def check_not_future(timestamps: list[int | None], loc: tuple[str, ...], skew_s: float | None) -> None:
    """422 naming the first timestamp later than now + `skew_s` (unix seconds; None: no check)."""
    if skew_s is None:
        return
    limit = time.time() + skew_s
    for i, ts in enumerate(timestamps):
        if ts is not None and ts > limit:
            raise FieldError((*loc, i, "timestamp"), f"{ts} is in the future (later than now + max_clock_skew_s={skew_s:g} s; "
                             "timestamps are unix seconds)")
