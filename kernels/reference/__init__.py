"""Plain-PyTorch reference implementations of the retrieval-stage ops.

These are the CPU path of `kernels.ops` and the oracle the Triton kernels are tested against.
Semantics are exactly those of docs/INTERFACES.md ("Kernel ops").
"""

from __future__ import annotations

from kernels.reference.sdim_table import sdim_bucket_table, sdim_gather
from kernels.reference.simhash import simhash_codes
from kernels.reference.topk_search import topk_aggregate, topk_target_search

__all__ = [
    "sdim_bucket_table",
    "sdim_gather",
    "simhash_codes",
    "topk_aggregate",
    "topk_target_search",
]
