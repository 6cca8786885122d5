"""GPU kernels (Triton) for the long-sequence retrieval stage, each behind a `torch.library`
custom op dispatched by tensor device, with a plain-PyTorch reference (the CPU path and the
test oracle). Imports nothing of the project."""
