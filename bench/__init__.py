"""Benchmarks: run one with `python -m bench.<name>` (see bench/README.md)."""
