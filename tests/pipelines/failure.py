"""Failure injection for the Ray Train tests (test-only code, shipped to the workers by value):
`ExitOnce(rank, step, marker)` is a `train_with_ray(step_hook=...)` that makes worker `rank` exit
once, at global step `step`, and records that it happened in the `marker` file."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cloudpickle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExitOnce:
    rank: int
    step: int
    marker: str
    #: a report still in flight when a worker dies is lost (the controller collects reports on its
    #: health-check poll, every 2 s); a real failure comes long after the last report, so the hook
    #: waits for the poll before dying
    delay_s: float = 6.0

    def __call__(self, rank: int, global_step: int) -> None:
        if rank != self.rank or global_step != self.step:
            return
        marker = Path(self.marker)
        if marker.exists():
            return
        marker.write_text(json.dumps({"rank": rank, "step": global_step, "pid": os.getpid()}))
        log.warning("ExitOnce: rank %d exits at global step %d (test hook)", rank, global_step)
        time.sleep(self.delay_s)
        os._exit(1)


# Ray ships the hook with cloudpickle; by value, so the workers need not import the tests package
cloudpickle.register_pickle_by_value(sys.modules[__name__])
