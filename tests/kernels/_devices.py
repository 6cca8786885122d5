"""Devices the Triton kernel tests run on: CPU tensors under TRITON_INTERPRET=1 (CI, no GPU),
CUDA tensors when a GPU is present and the interpreter is off."""

from __future__ import annotations

import pytest
import torch

from kernels.triton._common import interpreting


def triton_devices() -> list:
    if interpreting():
        return ["cpu"]
    if torch.cuda.is_available():
        return ["cuda"]
    return [pytest.param("cpu", marks=pytest.mark.skip(reason="no GPU and TRITON_INTERPRET is not 1"))]


def triton_device() -> str:
    """The one device a single-device kernel test runs on (skipped where `triton_devices` skips)."""
    device = triton_devices()[0]
    if not isinstance(device, str):
        pytest.skip("no GPU and TRITON_INTERPRET is not 1")
    return device


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| in float64 (0 when both are zero)."""
    a, ref = a.double().cpu(), ref.double().cpu()
    assert not torch.isnan(a).any(), "NaN in kernel output"
    den = ref.norm().item()
    return (a - ref).norm().item() / den if den > 0 else (a - ref).norm().item()
