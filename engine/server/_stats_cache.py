"""The shards' own figures for GetStats, without making GetStats wait behind ingestion.

Asking a shard for its figures waits for the step it is running, one request's events: up to
~100 ms for 10,000 events on 21 segments. GetStats therefore answers from the figures of the
last ask when they are still exact (no round or barrier has changed a shard since) or, while
ingestion runs (``busy()``: rounds in flight or queued), when they are at most ``max_age_s``
old; a fresh ask then starts in the background once they are older than half of that. When
the gateway is idle, or the figures are older than ``max_age_s`` (or there are none yet), the
caller waits for the shards: an idle engine's stats are always exact.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable


class ShardStatsCache:
    def __init__(self, ask: Callable[[], Awaitable[list]], busy: Callable[[], bool],
                 max_age_s: float = 1.0):
        self._ask = ask
        self._busy = busy
        self.max_age_s = max_age_s
        self.epoch = 0                  # moves whenever a shard's state may have changed
        self._value: list | None = None
        self._value_epoch = -1
        self._value_t = 0.0
        self._refresh: asyncio.Task | None = None

    def changed(self) -> None:
        """A round was applied or a barrier ran: what the shards said may be out of date."""
        self.epoch += 1

    def forget(self) -> None:
        """Shards were replaced (reset, recovery, scaling): never answer from the old ones."""
        self.changed()
        self._value = None

    async def get(self) -> tuple[list, float]:
        """-> (one stats dict per shard, their age in seconds: 0 when exact)."""
        now = time.monotonic()
        if self._value is not None:
            age = now - self._value_t
            if self._value_epoch == self.epoch:
                return self._value, 0.0
            if age < self.max_age_s and self._busy():
                if age > self.max_age_s / 2:
                    self._start_refresh()
                return self._value, age
        await self._start_refresh()
        return self._value, 0.0

    def _start_refresh(self) -> asyncio.Task:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._fetch())
        return self._refresh

    async def _fetch(self) -> None:
        epoch, t = self.epoch, time.monotonic()      # as of the ask, not its answer
        value = await self._ask()
        if epoch >= self._value_epoch:
            self._value, self._value_epoch, self._value_t = value, epoch, t
