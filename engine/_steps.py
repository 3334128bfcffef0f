"""Steps: the one vocabulary of changes to a shard's state.

Every change to a ``ShardCore`` is a step ``(kind, payload, now_ms)``, applied by
:func:`apply_step`. The embedded ``Engine`` applies the steps of an operation to its one core;
the gateway sends each shard actor the steps of a round in one call (``ShardHost.run``); and
recovery replays the logged operations as the same steps. So there is exactly one way in which
an operation changes state, wherever it runs.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from ._deltas import DeltaBatch


class Step(IntEnum):
    EVENTS = 1            # payload: EventColumns
    TRAITS = 2            # payload: TraitColumns
    ADVANCE = 3           # payload: None
    RESCORE = 4           # payload: (k, n) slice of users, re-scored with every model (TIME)
    CREATE_SEGMENT = 5    # payload: SegmentDef
    REPLACE_SEGMENT = 6   # payload: SegmentDef
    DELETE_SEGMENT = 7    # payload: segment name
    DELETE_USER = 8       # payload: user id
    DEPLOY_MODEL = 9      # payload: (Deployment, score everyone now: bool)
    MODEL_UPDATE = 10     # payload: (model name, (k, n) slice)
    DROP_MODEL = 11       # payload: model name
    SET_RFM = 12          # payload: RFM boundaries (engine._rfm.bounds_payload), TIME deltas
    SIZES = 13            # payload: segment names; -> their sizes (a size-history sample), no deltas


StepTuple = tuple[int, Any, int]


def apply_step(core, kind: int, payload: Any, now_ms: int) -> DeltaBatch | list[int]:
    """Apply one step to ``core`` (a ShardCore) -> the deltas it caused (a SIZES step reads
    instead: -> the sizes of the segments it names, in order)."""
    if kind == Step.EVENTS:
        return core.apply_events(payload, now_ms)
    if kind == Step.TRAITS:
        return core.apply_traits(payload, now_ms)
    if kind == Step.ADVANCE:
        return core.advance(now_ms)
    if kind == Step.RESCORE:
        return core.rescore(now_ms, tuple(payload) if payload else (0, 1))
    if kind == Step.CREATE_SEGMENT:
        return core.create_segment(payload, now_ms)
    if kind == Step.REPLACE_SEGMENT:
        return core.replace_segment(payload, now_ms)
    if kind == Step.DELETE_SEGMENT:
        return core.delete_segment(payload, now_ms)
    if kind == Step.DELETE_USER:
        return core.delete_user(payload, now_ms)
    if kind == Step.DEPLOY_MODEL:
        dep, score = payload
        return core.deploy_model(dep, now_ms, bool(score))
    if kind == Step.MODEL_UPDATE:
        name, part = payload
        return core.model_update(name, now_ms, tuple(part))
    if kind == Step.DROP_MODEL:
        core.drop_model(payload)
        return DeltaBatch()
    if kind == Step.SET_RFM:
        return core.set_rfm(payload, now_ms)
    if kind == Step.SIZES:
        from ._history import segment_sizes

        return segment_sizes(core, payload)
    raise ValueError(f"unknown step kind {kind!r}")
