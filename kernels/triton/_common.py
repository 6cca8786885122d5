"""Shared helpers for the Triton kernels: interpreter detection, block-size bucketing, the
device's multiprocessor count (for grid sizing).

No kernel autotunes: every launcher picks its block sizes from a fixed rule per shape class
(kernels/triton/configs.py), so a new shape never stalls a request on a tuning sweep, and the
integer size arguments are marked `do_not_specialize` so a new length compiles nothing.
"""

from __future__ import annotations

import functools
import os

import torch
import triton


def interpreting() -> bool:
    """True when Triton runs in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def pow2(n: int, lo: int = 1) -> int:
    """Next power of two >= max(n, lo)."""
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


@functools.lru_cache(maxsize=8)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of `device`; CPU tensors (the interpreter) count as a 2-SM device,
    which keeps interpreter grids small (its cost grows with the number of programs). Tests that
    need the many-chunk plans of a large GPU pass an explicit config."""
    if device.type != "cuda":
        return 2
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def check_cuda_or_interp(*tensors) -> None:
    """The kernels take CUDA tensors, or CPU tensors when the interpreter is on."""
    for t in tensors:
        if not t.is_cuda and not interpreting():
            raise RuntimeError(
                f"Triton kernel got a {t.device} tensor; use CUDA tensors or set TRITON_INTERPRET=1 "
                "(kernels.ops dispatches CPU tensors to the reference)")
