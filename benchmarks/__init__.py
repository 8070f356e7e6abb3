"""Benchmarks: `python -m benchmarks.graph_building`, `python -m benchmarks.throughput`."""
