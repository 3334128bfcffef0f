"""Batch ids: a retried ``EventBatch``/``TraitBatch`` whose ``batch_id`` was already accepted is
not applied again and gets its first reply (also after a restart: the ids travel in the log's
frames and in snapshots). The newest ``window`` ids are remembered."""

from __future__ import annotations

import asyncio
import collections

from engine.durability.frames import Reply

DEFAULT_WINDOW = 100_000


class BatchIds:
    def __init__(self, window: int = DEFAULT_WINDOW):
        self.window = window
        self._done: collections.OrderedDict[str, Reply] = collections.OrderedDict()
        self._in_flight: dict[str, asyncio.Future] = {}

    def lookup(self, batch_id: str):
        """-> the first Reply, a Future of it (the batch is being applied), or None."""
        if not batch_id:
            return None
        reply = self._done.get(batch_id)
        if reply is not None:
            return reply
        return self._in_flight.get(batch_id)

    def begin(self, batch_id: str, future: asyncio.Future) -> None:
        if batch_id:
            self._in_flight[batch_id] = future

    def abandon(self, batch_id: str) -> None:
        """The batch was refused as a whole (nothing applied): a retry applies it."""
        self._in_flight.pop(batch_id, None)

    def done(self, batch_id: str, reply: Reply) -> None:
        self._in_flight.pop(batch_id, None)
        self._done[batch_id] = reply
        self._done.move_to_end(batch_id)
        while len(self._done) > self.window:
            self._done.popitem(last=False)

    def export(self) -> list:
        return [[b, r.accepted, r.rejected, [list(x) for x in r.rejections], r.now_ms]
                for b, r in self._done.items()]

    def restore(self, rows: list) -> None:
        self._done.clear()
        for b, acc, rej, rejections, now in rows:
            self._done[b] = Reply(int(acc), int(rej), [(int(i), s) for i, s in rejections], int(now))
