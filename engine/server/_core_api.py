"""The gateway's validation of ingestion, kept in one module so that it is the embedded
engine's validation code exactly (``engine._batch``), with the server's limits."""

from __future__ import annotations


def validate_events(columns: dict, now_ms: int, retention_ms: int, clock: str, limits=None,
                    names=None):
    """Plain columns -> (EventColumns, rejections, largest accepted timestamp or None).

    ``now_ms`` is the clock before the batch (the too-old cut-off and, with the wall clock,
    the timestamp of events that give none)."""
    from engine._batch import prepare_events

    cols, rejections = prepare_events(
        columns["user_id"], columns["type"], columns["timestamp_ms"], columns.get("value"),
        columns.get("properties") or None,
        now_ms=now_ms, retention_ms=retention_ms, clock=clock, limits=limits, names=names)
    return cols, rejections, cols.max_timestamp(None)


def validate_traits(updates: list, now_ms: int, retention_ms: int, clock: str, limits=None,
                    names=None):
    """[(user_id, {name: value}, timestamp_ms | None)] -> (TraitColumns, rejections, max ts)."""
    from engine._batch import prepare_traits

    cols, rejections = prepare_traits(updates, now_ms=now_ms, retention_ms=retention_ms,
                                      clock=clock, limits=limits, names=names)
    return cols, rejections, cols.max_timestamp(None)
