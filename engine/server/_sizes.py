"""LiveSizes: every segment's size, kept by the gateway from the deltas it publishes.

A segment's size changes only by its ENTER and EXIT deltas, and every delta passes through the
sequencer, so counting them there keeps each size exact as of the last published round, with
no call to the shards: ``GetSegment`` and ``ListSegments`` answer from here at once instead of
waiting behind the ingestion queue. The count starts from the shards' own count, taken inside
a barrier (nothing in flight, so it matches the published log); whatever could change state
without deltas going through here (a restart from a snapshot, a reset, slot moves) makes the
sizes unknown again until the next such count.
"""

from __future__ import annotations

import numpy as np

from engine._deltas import ENTER, DeltaBatch


class LiveSizes:
    def __init__(self) -> None:
        self._sizes: dict[str, int] = {}
        self.known = False

    def forget(self) -> None:
        """Sizes unknown until :meth:`counted`."""
        self.known = False
        self._sizes = {}

    def counted(self, sizes: dict[str, int]) -> None:
        """The shards' count of every segment, inside a barrier."""
        self._sizes = {n: int(v) for n, v in sizes.items()}
        self.known = True

    def get(self, name: str) -> int | None:
        """The size of ``name``, or None when sizes are unknown."""
        return self._sizes.get(name, 0) if self.known else None

    def published(self, batch: DeltaBatch) -> None:
        if not self.known or not len(batch):
            return
        sizes = self._sizes
        segs = batch.segments
        step = np.where(batch.kind == ENTER, 1, -1).tolist()
        first = segs[0]
        if segs[-1] == first and segs.count(first) == len(segs):   # one segment: the common case
            sizes[first] = sizes.get(first, 0) + sum(step)
            return
        for seg, d in zip(segs, step):
            sizes[seg] = sizes.get(seg, 0) + d

    def dropped(self, name: str) -> None:
        self._sizes.pop(name, None)
