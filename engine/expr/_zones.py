"""IANA time zones for ``active_days(E, W, "ZONE")``: names and UTC offset tables.

The evaluation kernels never call Python per event: a zone is turned, once per process, into
a table of its UTC offset transitions (``transitions``), which the kernel searches for each
event's timestamp. The table is built from the standard library's ``zoneinfo`` by sampling
the offset once a day over ``TABLE_START_MS .. TABLE_END_MS`` (1900..2100) and locating every
change to the second by bisection (tz data changes offsets on whole seconds). Before and
after that range the offset in force at its edge applies.
"""

from __future__ import annotations

import datetime as _dt
import functools
import zoneinfo

import numpy as np

DAY_MS = 86_400_000
TABLE_START_MS = -2_208_988_800_000  # 1900-01-01T00:00:00Z
TABLE_END_MS = 4_102_444_800_000     # 2100-01-01T00:00:00Z

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


# Names in the tz database directory that are not places: "localtime" is the machine's own
# setting (it would make a segment mean different things on different machines).
_NOT_ZONES = frozenset({"localtime", "Factory", "posixrules"})


@functools.lru_cache(maxsize=1)
def _available() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - _NOT_ZONES


def zone_info(name: str) -> zoneinfo.ZoneInfo | None:
    """The ``ZoneInfo`` of an IANA zone name, or None if there is no such zone here."""
    if not isinstance(name, str) or name not in _available():
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError, TypeError):
        return None


def is_zone(name: str) -> bool:
    return zone_info(name) is not None


def _offset_s(tz: zoneinfo.ZoneInfo, t_s: int) -> int:
    """UTC offset (whole seconds) of ``tz`` at the instant ``t_s`` (seconds since the epoch)."""
    off = (_EPOCH + _dt.timedelta(seconds=t_s)).astimezone(tz).utcoffset()
    return int(off.total_seconds())


@functools.lru_cache(maxsize=64)
def transitions(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(starts_ms, offsets_ms)`` int64 arrays: from ``starts_ms[i]`` (inclusive) the zone's
    UTC offset is ``offsets_ms[i]``. ``starts_ms[0]`` is the int64 minimum (the offset in
    force at 1900 applies to every earlier instant). Raises KeyError for an unknown zone."""
    tz = zone_info(name)
    if tz is None:
        raise KeyError(name)
    step = DAY_MS // 1000
    start_s, end_s = TABLE_START_MS // 1000, TABLE_END_MS // 1000
    starts = [np.iinfo(np.int64).min]
    offs = [_offset_s(tz, start_s)]
    prev_t, prev_o = start_s, offs[0]
    t = start_s + step
    while t <= end_s:
        o = _offset_s(tz, t)
        if o != prev_o:
            lo, hi = prev_t, t  # offset(lo) == prev_o, offset(hi) == o
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset_s(tz, mid) == prev_o:
                    lo = mid
                else:
                    hi = mid
            # a change of offset between two samples that does not settle at ``o`` at once
            # (two changes within a day) is followed sample by sample from ``hi``
            o_hi = _offset_s(tz, hi)
            starts.append(hi * 1000)
            offs.append(o_hi)
            prev_o, prev_t = o_hi, hi
            if o_hi != o:
                continue
        prev_t, prev_o = t, o
        t += step
    return np.array(starts, dtype=np.int64), np.array(offs, dtype=np.int64) * 1000


def local_day(t_ms: int, name: str) -> int:
    """The local calendar day of the instant ``t_ms`` in zone ``name``, as days since
    1970-01-01 (what the kernel computes from the table: floor((t + offset(t)) / 1d))."""
    starts, offs = transitions(name)
    i = int(np.searchsorted(starts, t_ms, side="right")) - 1
    return (int(t_ms) + int(offs[i])) // DAY_MS
