"""Shared helpers for the Triton kernels: interpreter detection, block-size bucketing, autotune configs.

Autotune keys always use *bucketed* sizes (next power of two) so that long-tailed history lengths
do not trigger a recompile / re-tune per distinct length.
"""

from __future__ import annotations

import os

import triton


def interpreting() -> bool:
    """True when Triton runs in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def pow2(n: int, lo: int = 1) -> int:
    """Next power of two >= max(n, lo)."""
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


def configs(gpu: list[triton.Config], interp: triton.Config) -> list[triton.Config]:
    """Autotune candidates: several on the GPU, exactly one under the interpreter
    (multi-config autotune does not work in the interpreter)."""
    return [interp] if interpreting() else gpu


def check_cuda_or_interp(*tensors) -> None:
    """The kernels take CUDA tensors, or CPU tensors when the interpreter is on."""
    for t in tensors:
        if not t.is_cuda and not interpreting():
            raise RuntimeError(
                f"Triton kernel got a {t.device} tensor; use CUDA tensors or set TRITON_INTERPRET=1 "
                "(kernels.ops dispatches CPU tensors to the reference)")
