"""Runnable benchmarks (`python -m benchmarks.<name>`) and their committed result tables."""
