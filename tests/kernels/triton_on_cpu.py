"""Test-only: run the Triton launchers (in the interpreter) for CPU tensors.

Production `kernels._library` dispatches CPU tensors to the PyTorch reference and CUDA tensors to
Triton, with no switch on its call path. To check whole models on the Triton path without a GPU,
this module registers, once per test process, a "cpu" kernel on every `recsys::` op (forwards and
the registered backward ops) that calls the same launcher as the op's "cuda" kernel. The kernels
are registered disabled (torch.library `CustomOpDef.set_kernel_enabled`) and enabled only inside
`use_triton_on_cpu()`, so every other test keeps the reference.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable, Iterator

from kernels import _library as lib
from kernels.triton._common import interpreting

# op -> (module, launcher): the "cuda" kernel of each op in kernels/_library.py, looked up at call
# time so a test may wrap a launcher in place (monkeypatch) and count its calls.
_ROUTES = {
    lib.simhash_codes: ("kernels.triton.simhash", "simhash_codes_triton"),
    lib.sdim_bucket_table: ("kernels.triton.sdim", "sdim_bucket_table_triton"),
    lib.sdim_bucket_table_backward: ("kernels.triton.sdim", "sdim_bucket_table_backward_triton"),
    lib.sdim_gather: ("kernels.triton.sdim", "sdim_gather_triton"),
    lib.sdim_gather_backward: ("kernels.triton.sdim", "sdim_gather_backward_triton"),
    lib.topk_target_search: ("kernels.triton.topk", "topk_target_search_triton"),
    lib.topk_aggregate: ("kernels.triton.topk", "topk_aggregate_triton"),
    lib.topk_aggregate_backward: ("kernels.triton.topk", "topk_aggregate_backward_triton"),
}


def _launcher(module: str, name: str) -> Callable:
    def run(*args):
        fn = getattr(importlib.import_module(module), name)
        if name == "sdim_bucket_table_backward_triton":  # takes the output dtype as well
            return fn(*args, args[0].dtype)
        return fn(*args)

    return run


@functools.cache
def _registered() -> contextlib.ExitStack:
    """Register the disabled "cpu" kernels once; the returned stack holds them disabled for the
    process ("a kernel first disabled and then registered is disabled until enabled again")."""
    disabled = contextlib.ExitStack()
    for op, (module, name) in _ROUTES.items():
        disabled.enter_context(op.set_kernel_enabled("cpu", False))  # logs "no kernel registered yet"
        op.register_kernel("cpu", _launcher(module, name))
    return disabled


@contextlib.contextmanager
def use_triton_on_cpu() -> Iterator[None]:
    """Within the block, CPU tensors go to the Triton launchers (interpreter), forward and backward.
    Raises RuntimeError unless TRITON_INTERPRET=1 (compiled Triton cannot take CPU tensors)."""
    if not interpreting():
        raise RuntimeError("use_triton_on_cpu() needs TRITON_INTERPRET=1 in the environment before Triton "
                           "is imported (the Triton kernels run on CPU tensors only in the interpreter)")
    _registered()
    with contextlib.ExitStack() as enabled:
        for op in _ROUTES:
            enabled.enter_context(op.set_kernel_enabled("cpu", True))
        yield

