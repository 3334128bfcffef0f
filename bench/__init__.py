"""Benchmarks and their seeded workloads (no network, no wall clock in the data).

``python -m bench.core_bench`` runs the core benchmark of issue 3: the in-process engine
against a straightforward pure-Python implementation of the same segments.
"""
