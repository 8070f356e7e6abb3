"""Benchmarks: `python -m benchmarks.graph_building`, `python -m benchmarks.throughput`."""

from ambjax.host_memory import restart_if_run_as_module

restart_if_run_as_module()     # `python -m` a tool of this package: huge pages, before JAX
