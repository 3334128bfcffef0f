"""Durations as users write them (``30d``, ``250ms``) and as the engine keeps them (int ms)."""

from __future__ import annotations

import re

from .errors import ConfigError

UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")


def parse_duration_ms(value: "str | int", what: str = "duration") -> int:
    """``"30d"`` -> 2592000000; an int is taken as milliseconds already."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a duration like 30d or 12h, not {value!r}")
    if isinstance(value, int):
        ms = value
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ConfigError(f"{what} must be a duration like 30d, 12h or 250ms, not {value!r}")
        ms = int(m.group(1)) * UNIT_MS[m.group(2)]
    if ms <= 0:
        raise ConfigError(f"{what} must be positive, not {value!r}")
    return ms
