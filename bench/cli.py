"""``rtseg bench``: run a benchmark suite and print its table.

    rtseg bench --suite quick|full --out DIR
    python -m bench.cli --suite quick --out DIR

Exit status: 0 when every part ran and every membership check passed; 1 when a membership
check failed; 3 when some part reported an error instead of its figures (for example the
gRPC service failing), listed in the table and under ``parts_failed`` in the JSON; 2 on bad
usage.
"""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from bench.suite import PARTS

    p = argparse.ArgumentParser(
        prog="rtseg bench",
        description="Benchmarks of rtseg against a pure-Python implementation, Redis, bytewax and "
                    "DuckDB, in one run on the same seeded events (see bench/README.md).")
    p.add_argument("--suite", choices=("quick", "full"), default="quick",
                   help="quick: under 5 minutes on 2 cores; full: 10k/100k/1M users (10M if memory "
                        "allows), every curve (20-30 minutes)")
    p.add_argument("--out", metavar="DIR", default="bench-results",
                   help="directory for results.json, table.txt and the PNG plots (default: bench-results)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), metavar="PART",
                   help=f"run only these parts ({', '.join(PARTS)}; default: all)")
    p.add_argument("--merge", action="store_true",
                   help="keep the other parts' figures from DIR/results.json (same suite)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or log on stderr")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from bench.suite import run_suite

    out = os.path.abspath(args.out)
    results, text = run_suite(args.suite, out, progress=not args.no_progress, parts=args.parts,
                              merge=args.merge)
    print(text)
    print(f"results: {os.path.join(out, 'results.json')}; plots: "
          f"{', '.join(results.get('plots', [])) or 'none (matplotlib missing)'}")
    if not results.get("membership_equal"):
        return 1
    return 3 if results.get("parts_failed") else 0


if __name__ == "__main__":
    sys.exit(main())
