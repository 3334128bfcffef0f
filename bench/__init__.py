"""Benchmarks and their seeded workloads (no network, no wall clock in the data).

``python -m bench.core_bench`` runs the core benchmark of issue 3: the in-process engine
against a straightforward pure-Python implementation of the same segments.
"""

import json as _json


def emit_json(result: dict, out: str | None = None) -> None:
    """Print a benchmark's result as JSON, and also write it to ``out`` when given."""
    text = _json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
