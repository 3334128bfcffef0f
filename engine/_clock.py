"""The engine's clock: one definition of ``now`` for the embedded engine and the gateway.

``event``: ``now`` is the largest event timestamp seen (or the value given to
``advance_clock``), never moving back. ``wall``: ``now`` is the machine's clock (never back
either). Timestamps and clock moves ahead of ``max(now, machine clock) + max_future`` are
refused, so that one event cannot move ``now`` out of reach of every later one.
"""

from __future__ import annotations

import time

from .errors import ClockError, ConfigError

CLOCKS = ("event", "wall")
DEFAULT_MAX_FUTURE_MS = 86_400_000      # one day


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Clock:
    """``now`` of one engine. ``for_op()`` is the clock an operation is checked against;
    ``after(max_ts)`` the clock once an operation with that largest timestamp is applied."""

    def __init__(self, kind: str = "event", max_future_ms: int = DEFAULT_MAX_FUTURE_MS):
        if kind not in CLOCKS:
            raise ConfigError(f"clock must be 'event' or 'wall', not {kind!r}")
        self.kind = kind
        self.max_future_ms = int(max_future_ms)
        self.now_ms = 0 if kind == "event" else wall_ms()

    @property
    def is_event(self) -> bool:
        return self.kind == "event"

    def current(self) -> int:
        """``now`` as a reader sees it (the wall clock moves by itself)."""
        return max(self.now_ms, wall_ms()) if self.kind == "wall" else self.now_ms

    def for_op(self) -> int:
        """The clock before an operation (the wall clock is read once per operation)."""
        return self.current()

    def after(self, max_ts: int | None, before: int) -> int:
        """The clock after an operation checked at ``before`` whose largest accepted
        timestamp is ``max_ts`` (None: no timestamp)."""
        if self.kind == "wall" or max_ts is None:
            return before
        return max(before, int(max_ts))

    def future_bound(self) -> int:
        """Largest timestamp accepted now."""
        return max(self.now_ms, wall_ms()) + self.max_future_ms

    def check_advance(self, target_ms: int, allow_far_future: bool = False) -> int:
        """AdvanceClock: -> the new ``now``. ClockError on the wall clock, or beyond the
        future bound without ``allow_far_future``."""
        if self.kind != "event":
            raise ClockError("advance_clock works with the event clock only (serve with --clock event)")
        target = int(target_ms)
        if not allow_far_future and target > self.future_bound():
            raise ClockError(
                f"advance_clock to {target} is more than max_future ({self.max_future_ms} ms) ahead of "
                f"max(now, machine clock); pass allow_far_future to move there on purpose")
        return max(self.now_ms, target)

    def move(self, now_ms: int) -> None:
        self.now_ms = max(self.now_ms, int(now_ms))
