"""The gateway's contact points with the core (validation, shard construction, views and
delta order), kept in one module so that a change of a core interface is one edit here."""

from __future__ import annotations

from typing import Any

import numpy as np


def core_kwargs(gateway) -> dict[str, Any]:
    """Keyword arguments of ``ShardCore(...)`` for every shard of this gateway."""
    return {"retention_ms": gateway.retention_ms,
            "max_events_per_type": gateway.max_events_per_type}


def n_rows(cols) -> int:
    return len(cols)


def validate_events(columns: dict, now_ms: int, retention_ms: int, clock: str):
    """Plain columns -> (EventColumns, rejections, largest accepted timestamp or None).

    ``now_ms`` is the clock before the batch (the too-old cut-off and, with the wall clock,
    the timestamp of events that give none)."""
    from engine._batch import prepare_events

    cols, rejections = prepare_events(
        columns["user_id"], columns["type"], columns["timestamp_ms"], columns.get("value"),
        columns.get("properties") or None,
        now_ms=now_ms, retention_ms=retention_ms, clock=clock)
    return cols, rejections, cols.max_timestamp(None)


def validate_traits(updates: list, now_ms: int, retention_ms: int, clock: str):
    """[(user_id, {name: value}, timestamp_ms | None)] -> (TraitColumns, rejections, max ts)."""
    from engine._batch import prepare_traits

    cols, rejections = prepare_traits(updates, now_ms=now_ms, retention_ms=retention_ms,
                                      clock=clock)
    return cols, rejections, cols.max_timestamp(None)


def normalise_view(view: dict) -> dict:
    """A shard's ``user_view`` -> {known, segments (sorted), scores, traits}."""
    view = dict(view or {})
    return {"known": bool(view.get("known", False)),
            "segments": sorted(view.get("segments") or ()),
            "scores": dict(view.get("scores") or {}),
            "traits": dict(view.get("traits") or {})}


def merge_delta_batches(batches: list, segment_rank: dict[str, int]):
    """The DeltaBatches of one operation on several shards -> one batch in the embedded
    engine's order: by segment (dependencies first), then by user id."""
    from engine._deltas import DeltaBatch

    batches = [b for b in batches if b is not None and len(b)]
    if not batches:
        return DeltaBatch()
    if len(batches) == 1:
        return batches[0]
    merged = DeltaBatch.concat(batches)
    unknown = len(segment_rank)
    rank = np.fromiter((segment_rank.get(s, unknown) for s in merged.segments), np.int64,
                       len(merged.segments))
    users = np.asarray(merged.user_ids, dtype=object)
    order = np.lexsort((users, rank))   # last key is primary
    if np.all(order[1:] > order[:-1]):
        return merged
    return DeltaBatch(segments=[merged.segments[i] for i in order.tolist()],
                      user_ids=[merged.user_ids[i] for i in order.tolist()],
                      kind=merged.kind[order], cause=merged.cause[order], at_ms=merged.at_ms[order])
