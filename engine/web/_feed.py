"""Live segment sizes for the console: one Subscribe stream, fanned out to every open page.

The stream (``Client.subscribe``, blocking) runs in a thread; deltas only mark the sizes
stale, and a task on the event loop then reads the sizes once (``list_segments``) and pushes
them to every listener, at most every ``min_interval_s``: a burst of a million deltas costs
one read, and the sizes shown are the server's own, never a running sum that could drift.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from starlette.concurrency import run_in_threadpool

log = logging.getLogger("rtseg.console")

LISTENER_QUEUE = 8          # pushes waiting per page; a slow page gets the newest only
RETRY_S = 2.0               # after a failed stream or read


class SizeFeed:
    def __init__(self, client, min_interval_s: float = 0.2):
        self.client = client
        self.min_interval_s = min_interval_s
        self.sequence = 0                     # last delta seen
        self.deltas_seen = 0
        self._listeners: set[asyncio.Queue] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._thread: threading.Thread | None = None
        self._sub = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._scheduled = False
        self.latest: dict[str, Any] | None = None

    # ------------------------------------------------------------------ listeners

    def listen(self) -> asyncio.Queue:
        self._start()
        q: asyncio.Queue = asyncio.Queue(LISTENER_QUEUE)
        self._listeners.add(q)
        self.mark_dirty()                     # a fresh page gets the sizes now
        return q

    def unlisten(self, q: asyncio.Queue) -> None:
        self._listeners.discard(q)

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    def mark_dirty(self) -> None:
        """From the event loop: read and push the sizes soon (a segment changed)."""
        if self._dirty is not None:
            self._dirty.set()

    # ------------------------------------------------------------------ lifecycle

    def _start(self) -> None:
        if self._task is not None or self._closed.is_set():
            return
        self._loop = asyncio.get_running_loop()
        self._dirty = asyncio.Event()
        self._task = asyncio.ensure_future(self._push_loop())
        self._thread = threading.Thread(target=self._follow, name="rtseg-console-feed",
                                        daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self._closed.set()
        sub = self._sub
        if sub is not None:
            sub.close()
        for q in list(self._listeners):
            _offer(q, None)                   # ends each page's stream
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)

    # ------------------------------------------------------------------ the stream (thread)

    def _follow(self) -> None:
        while not self._closed.is_set():
            try:
                self._sub = self.client.subscribe([], 0)
                if self._closed.is_set():
                    self._sub.close()
                for delta in self._sub:
                    self._on_delta(delta.sequence)
            except Exception as exc:  # noqa: BLE001 - the page keeps its last sizes
                if self._closed.is_set():
                    return
                log.warning("console: the delta stream failed (%s); retrying", exc)
            if self._closed.wait(RETRY_S):
                return
            self._wake()                      # deltas may have been missed meanwhile

    def _on_delta(self, sequence: int) -> None:
        with self._lock:
            self.sequence = sequence
            self.deltas_seen += 1
            if self._scheduled:
                return
            self._scheduled = True
        self._wake()

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._dirty.set)
            except RuntimeError:              # the loop closed meanwhile
                pass

    # ------------------------------------------------------------------ pushing (event loop)

    async def _push_loop(self) -> None:
        while not self._closed.is_set():
            await self._dirty.wait()
            self._dirty.clear()
            with self._lock:
                self._scheduled = False
            if not self._listeners:
                continue
            try:
                segments, now_ms = await run_in_threadpool(self._read)
            except Exception as exc:  # noqa: BLE001
                log.warning("console: reading segment sizes failed (%s)", exc)
                await asyncio.sleep(RETRY_S)
                self._dirty.set()
                continue
            msg = {"time_ms": int(time.time() * 1000), "now_ms": now_ms, "sequence": self.sequence,
                   "deltas_seen": self.deltas_seen,
                   "sizes": {s.name: int(s.size) for s in segments}}
            self.latest = msg
            for q in list(self._listeners):
                _offer(q, msg)
            await asyncio.sleep(self.min_interval_s)


    def _read(self):
        return self.client.list_segments(), self.client.now_ms


def _offer(q: asyncio.Queue, item) -> None:
    """Put without waiting: a full queue drops its oldest push (sizes are state, the newest
    wins)."""
    while True:
        try:
            q.put_nowait(item)
            return
        except asyncio.QueueFull:
            try:
                q.get_nowait()
            except asyncio.QueueEmpty:
                pass
