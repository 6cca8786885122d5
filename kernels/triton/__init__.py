"""Triton kernels (the CUDA path of `kernels.ops`). Under TRITON_INTERPRET=1 they also run on CPU
tensors, which is how the tests check them against `kernels.reference` on a machine with no GPU."""
