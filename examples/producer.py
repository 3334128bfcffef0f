"""Send a seeded stream of shopping events to a running ``rtseg serve``, in columnar batches.

    rtseg serve --clock event &                  # or the default wall clock
    python examples/producer.py --users 10000 --events 200000 --batch 5000
    python examples/producer.py --create-segments     # also defines two example segments

Prints one JSON line per second with the events sent and the rate.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from engine.client import Client

TYPES = np.array(["view_product", "add_to_cart", "checkout", "purchase", "app_open"])
TYPE_WEIGHTS = np.array([0.6, 0.15, 0.05, 0.05, 0.15])
SEGMENTS = {
    "browsers": "count(view_product, 48h) >= 3 and count(purchase, 48h) == 0",
    "buyers": "count(purchase, 7d) >= 1",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=os.environ.get("RTSEG_TARGET", "127.0.0.1:50051"))
    ap.add_argument("--token", default=os.environ.get("RTSEG_TOKEN") or None)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=5_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--start-ms", type=int, default=None,
                    help="timestamp of the first event (default: now)")
    ap.add_argument("--step-ms", type=int, default=10, help="time between consecutive events")
    ap.add_argument("--create-segments", action="store_true")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    user_ids = np.array([f"user-{i}" for i in range(args.users)], dtype=object)
    products = np.array([f"p{i}" for i in range(500)], dtype=object)
    t0 = args.start_ms if args.start_ms is not None else time.time_ns() // 1_000_000
    with Client(args.target, args.token, wait_ready_s=30) as client:
        if args.create_segments:
            existing = {s.name for s in client.list_segments()}
            for name, expr in SEGMENTS.items():
                if name not in existing:
                    client.create_segment(name, expr)
        sent = 0
        started = last_report = time.monotonic()
        while sent < args.events:
            n = min(args.batch, args.events - sent)
            users = user_ids[rng.integers(0, args.users, n)]
            types = TYPES[rng.choice(len(TYPES), n, p=TYPE_WEIGHTS)]
            ts = t0 + (sent + np.arange(n, dtype=np.int64)) * args.step_ms
            values = np.where(types == "purchase", rng.gamma(2.0, 40.0, n), 0.0)
            result = client.ingest_columns(users, types, ts, values,
                                           {"product_id": products[rng.integers(0, 500, n)]})
            sent += n
            now = time.monotonic()
            if now - last_report >= 1.0 or sent >= args.events:
                print(json.dumps({"sent": sent, "accepted_last_batch": result.accepted,
                                  "rejected_last_batch": result.rejected,
                                  "events_per_s": round(sent / (now - started)),
                                  "now_ms": result.now_ms}), flush=True)
                last_report = now


if __name__ == "__main__":
    main()
