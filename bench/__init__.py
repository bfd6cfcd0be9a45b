"""Benchmarks: `make bench` runs every `bench/bench_*.py` and prints numbers, never pass/fail."""
