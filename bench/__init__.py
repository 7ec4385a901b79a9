"""Benchmarks: each script starts what it needs and prints its figures beside a baseline."""
