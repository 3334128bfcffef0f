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


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Clock:
    """``now`` of one engine. ``for_op()`` is the clock an operation is checked against;
    ``after(max_ts)`` the clock once an operation with that largest timestamp is applied.
    The future bound is ``engine.limits`` (one rule for events and AdvanceClock)."""

    def __init__(self, kind: str = "event", limits=None):
        from .limits import DEFAULT_LIMITS

        if kind not in CLOCKS:
            raise ConfigError(f"clock must be 'event' or 'wall', not {kind!r}")
        self.kind = kind
        self.limits = limits or DEFAULT_LIMITS
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

    def check_advance(self, target_ms: int, allow_far_future: bool = False) -> int:
        """AdvanceClock: -> the new ``now``. ClockError on the wall clock, or beyond the
        future bound without ``allow_far_future``."""
        from .limits import check_clock_move

        if self.kind != "event":
            raise ClockError("advance_clock works with the event clock only (serve with --clock event)")
        target = check_clock_move(target_ms, self.now_ms, self.limits, allow_far_future)
        return max(self.now_ms, target)

    def move(self, now_ms: int) -> None:
        self.now_ms = max(self.now_ms, int(now_ms))
