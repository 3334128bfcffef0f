"""Follow the entry/exit deltas of a running ``rtseg serve`` and keep each segment's members.

    python examples/consumer.py browsers buyers       # no names: every segment

Starts from the segments' current members (ExportSegment), then applies live deltas; if the
consumer falls behind the server's retained delta log (OUT_OF_RANGE), it re-reads the members
and continues. Reconnects after a dropped connection resume where they left off. Prints one
JSON line per delta.
"""

from __future__ import annotations

import argparse
import json
import os

from engine import SequenceTooOld
from engine.client import Client


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("segments", nargs="*")
    ap.add_argument("--target", default=os.environ.get("RTSEG_TARGET", "127.0.0.1:50051"))
    ap.add_argument("--token", default=os.environ.get("RTSEG_TOKEN") or None)
    ap.add_argument("--count", type=int, default=0, help="stop after this many deltas")
    args = ap.parse_args()

    with Client(args.target, args.token, wait_ready_s=30) as client:
        seen = 0
        while True:
            # 1. where the log is now, 2. the members as of (at least) then, 3. deltas after it
            after = client.last_sequence
            names = args.segments or [s.name for s in client.list_segments()]
            members = {name: client.members(name) for name in names}
            print(json.dumps({"synced": {n: len(m) for n, m in members.items()},
                              "after_sequence": after}), flush=True)
            stream = client.subscribe(args.segments, after_sequence=after,
                                      from_oldest=after == 0)
            try:
                for d in stream:
                    group = members.setdefault(d.segment, set())
                    (group.add if d.kind == "ENTER" else group.discard)(d.user_id)
                    print(json.dumps({"sequence": d.sequence, "segment": d.segment,
                                      "user_id": d.user_id, "kind": d.kind, "cause": d.cause,
                                      "at_ms": d.at_ms, "size": len(group)}), flush=True)
                    seen += 1
                    if args.count and seen >= args.count:
                        return
            except SequenceTooOld:
                continue        # fell behind the retained log: re-sync from the members
            finally:
                stream.close()


if __name__ == "__main__":
    main()
