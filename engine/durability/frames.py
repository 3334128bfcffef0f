"""Frames: every accepted change of an engine as one record, and the shard steps it stands for.

A *frame* is one operation after validation, with everything needed to apply it again exactly:
the validated columns (not the raw request), the clock it ran at, the slice of users re-scored
right after it, and for ingestion its batch id and the reply it got. The write-ahead log stores
frames; the embedded engine and the gateway turn each frame into shard steps with
:func:`frame_phases`, and recovery replays logged frames through the same function, so a
replayed frame changes state (and emits deltas, with the same sequence numbers) exactly as it
did the first time.

Phases: a frame becomes one or more *phases*, each one step per shard (or none for a shard it
does not touch). The deltas of one phase are merged over the shards into one batch (by
segment order, then user id) and the phases' batches are appended in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from engine._steps import Step

# operations
EVENTS = "events"
TRAITS = "traits"
CLOCK = "clock"
RESCORE = "rescore"
SEGMENT_CREATE = "segment_create"
SEGMENT_REPLACE = "segment_replace"
SEGMENT_DELETE = "segment_delete"
USER_DELETE = "user_delete"
MODEL_DEPLOY = "model_deploy"
MODEL_UPDATE = "model_update"
MODEL_DROP = "model_drop"
GOAL_CREATE = "goal_create"      # engine._goals: the definition (a dict); no shard step
GOAL_DELETE = "goal_delete"      # a goal name; no shard step
RFM = "rfm"

OPS = frozenset({EVENTS, TRAITS, CLOCK, RESCORE, SEGMENT_CREATE, SEGMENT_REPLACE, SEGMENT_DELETE,
                 USER_DELETE, MODEL_DEPLOY, MODEL_UPDATE, MODEL_DROP, RFM})
OPS = OPS | {GOAL_CREATE, GOAL_DELETE}
FORMAT = 1


@dataclass
class Reply:
    """What an ingestion frame answered: kept so that a retried batch id gets it again."""

    accepted: int
    rejected: int
    rejections: list = field(default_factory=list)   # (index, reason)
    now_ms: int = 0


@dataclass
class Frame:
    """One accepted operation.

    ``payload`` by ``op``: EVENTS EventColumns; TRAITS TraitColumns; SEGMENT_CREATE/REPLACE a
    SegmentDef; SEGMENT_DELETE, USER_DELETE, MODEL_DROP a name; MODEL_DEPLOY ``(name, version,
    score everyone now)``; MODEL_UPDATE ``(name, (k, n))``; RESCORE ``(k, n)``; CLOCK None;
    RFM the boundaries ``engine._rfm.bounds_payload`` computed (replayed as they were).
    ``rescore``: the slice ``(k, n)`` of users re-scored right after the operation, or None.
    """

    op: str
    now_ms: int
    payload: Any = None
    rescore: tuple[int, int] | None = None
    batch_id: str = ""
    reply: Reply | None = None
    deployment: Any = None          # MODEL_DEPLOY: the Deployment (not logged: read from the registry)


# ----------------------------------------------------------------------------- phases

def frame_phases(frame: Frame, before_ms: int, n_shards: int,
                 route: Callable[[Any], dict[int, Any]],
                 shard_of_user: Callable[[str], int]) -> list[list[tuple | None]]:
    """The steps of ``frame`` on ``n_shards`` shards, phase by phase: ``out[p][i]`` is shard
    ``i``'s step of phase ``p`` (a ``(kind, payload, now)`` tuple) or None.

    ``before_ms`` is the clock before the frame: shards that the operation does not touch
    still advance to the frame's ``now`` (time-driven changes), so after every frame all
    shards are at the same ``now``."""
    now = frame.now_ms
    op = frame.op
    moved = now > before_ms
    advance = [(Step.ADVANCE, None, now) if moved else None for _ in range(n_shards)]
    phases: list[list[tuple | None]]
    if op in (EVENTS, TRAITS):
        kind = Step.EVENTS if op == EVENTS else Step.TRAITS
        parts = route(frame.payload) if len(frame.payload) else {}
        phases = [[(kind, parts[i], now) if i in parts else advance[i] for i in range(n_shards)]]
    elif op in (CLOCK, GOAL_CREATE, GOAL_DELETE):
        phases = [advance]
    else:
        if op == SEGMENT_CREATE:
            step = (Step.CREATE_SEGMENT, frame.payload, now)
        elif op == SEGMENT_REPLACE:
            step = (Step.REPLACE_SEGMENT, frame.payload, now)
        elif op == SEGMENT_DELETE:
            step = (Step.DELETE_SEGMENT, frame.payload, now)
        elif op == MODEL_DEPLOY:
            step = (Step.DEPLOY_MODEL, (frame.deployment, bool(frame.payload[2])), now)
        elif op == MODEL_UPDATE:
            step = (Step.MODEL_UPDATE, (frame.payload[0], tuple(frame.payload[1])), now)
        elif op == MODEL_DROP:
            step = (Step.DROP_MODEL, frame.payload, now)
        elif op == RESCORE:
            step = (Step.RESCORE, tuple(frame.payload or (0, 1)), now)
        elif op == RFM:
            step = (Step.SET_RFM, frame.payload, now)
        elif op == USER_DELETE:
            step = None
        else:
            raise ValueError(f"unknown frame operation {op!r}")
        if op == USER_DELETE:
            owner = shard_of_user(frame.payload)
            main = [(Step.DELETE_USER, frame.payload, now) if i == owner else None
                    for i in range(n_shards)]
        else:
            main = [step] * n_shards
        phases = [advance, main] if moved else [main]
    if frame.rescore is not None:
        phases.append([(Step.RESCORE, tuple(frame.rescore), now)] * n_shards)
    return phases


# ----------------------------------------------------------------------------- records

def _strings(col) -> list:
    return [col.blob, col.offsets, col.hashes, col.codes]


def _strings_from(rec):
    from engine.kernels._strings import StringColumn

    blob, offsets, hashes, codes = rec
    return StringColumn(np.asarray(blob, np.uint8), np.asarray(offsets, np.int64),
                        np.asarray(hashes, np.uint64), np.asarray(codes, np.int32))


def _segment_record(defn) -> dict:
    return {"name": defn.name, "expression": defn.expression, "description": defn.description,
            "created_ms": int(defn.created_ms), "version": int(defn.version),
            "models": list(defn.models)}


def segment_from_record(rec: dict, retention_ms: int):
    """A logged segment definition, compiled again (the same text gives the same plan)."""
    from engine._segments import SegmentDef
    from engine.expr import compile_expression, segment_refs

    tree = compile_expression(rec["expression"], retention_ms=retention_ms)
    return SegmentDef(rec["name"], rec["expression"], tree, tuple(sorted(segment_refs(tree))),
                      rec.get("description", ""), int(rec["created_ms"]), int(rec["version"]),
                      tuple(rec.get("models", ())))


def to_record(frame: Frame) -> dict:
    """A frame as a msgpack-able dict (numpy arrays are encoded by the log)."""
    op = frame.op
    p = frame.payload
    if op == EVENTS:
        payload: Any = {"u": _strings(p.user), "t": _strings(p.type), "ts": p.timestamp_ms,
                        "v": p.value, "p": [[k, a] for k, a in p.props.items()],
                        "ps": _strings(p.prop_strings)}
    elif op == TRAITS:
        payload = {"u": _strings(p.user), "ts": p.timestamp_ms,
                   "tr": [[k, b, g] for k, (b, g) in p.traits.items()], "s": _strings(p.strings)}
    elif op in (SEGMENT_CREATE, SEGMENT_REPLACE):
        payload = _segment_record(p)
    elif op in (MODEL_UPDATE,):
        payload = [p[0], list(p[1])]
    elif op in (MODEL_DEPLOY, RESCORE):
        payload = list(p) if p is not None else None
    else:
        payload = p
    rec: dict = {"f": FORMAT, "op": op, "now": int(frame.now_ms), "p": payload}
    if frame.rescore is not None:
        rec["rs"] = [int(frame.rescore[0]), int(frame.rescore[1])]
    if frame.batch_id:
        rec["b"] = frame.batch_id
    if frame.reply is not None:
        r = frame.reply
        rec["r"] = [int(r.accepted), int(r.rejected), [[int(i), str(s)] for i, s in r.rejections],
                    int(r.now_ms)]
    return rec


def from_record(rec: dict, retention_ms: int) -> Frame:
    """A logged record -> Frame (segment definitions compiled again)."""
    from engine._batch import EventColumns, TraitColumns

    if not isinstance(rec, dict) or rec.get("op") not in OPS or rec.get("f") != FORMAT:
        raise ValueError(f"not a frame record of format {FORMAT}: {str(rec)[:80]}")
    op = rec["op"]
    p = rec.get("p")
    if op == EVENTS:
        payload: Any = EventColumns(_strings_from(p["u"]), _strings_from(p["t"]),
                                    np.asarray(p["ts"], np.int64), np.asarray(p["v"], np.float64),
                                    {k: np.asarray(a, np.float64) for k, a in p["p"]},
                                    _strings_from(p["ps"]))
    elif op == TRAITS:
        payload = TraitColumns(_strings_from(p["u"]), np.asarray(p["ts"], np.int64),
                               {k: (np.asarray(b, np.float64), np.asarray(g, np.bool_))
                                for k, b, g in p["tr"]},
                               _strings_from(p["s"]))
    elif op in (SEGMENT_CREATE, SEGMENT_REPLACE):
        payload = segment_from_record(p, retention_ms)
    elif op == MODEL_DEPLOY:
        payload = (str(p[0]), int(p[1]), bool(p[2]))
    elif op == MODEL_UPDATE:
        payload = (str(p[0]), (int(p[1][0]), int(p[1][1])))
    elif op == RESCORE:
        payload = (int(p[0]), int(p[1])) if p is not None else None
    else:
        payload = p
    rs = rec.get("rs")
    r = rec.get("r")
    reply = Reply(int(r[0]), int(r[1]), [(int(i), s) for i, s in r[2]], int(r[3])) if r else None
    return Frame(op, int(rec["now"]), payload, (int(rs[0]), int(rs[1])) if rs else None,
                 rec.get("b", ""), reply)
