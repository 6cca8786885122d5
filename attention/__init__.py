"""nn.Modules for the attention mechanisms (causal, multi-query, target, hashing), built on
torch and `kernels`. Imports only `kernels` from this project."""
