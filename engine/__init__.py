"""rtseg: real-time behavioural segmentation.

The embedded API (no server, no Ray)::

    from engine import Engine
    eng = Engine(clock="event", retention="30d")
"""

from ._deltas import Delta
from ._engine import Engine, IngestResult, SegmentInfo
from .errors import (ClockError, ConfigError, EngineError, ExpressionError, ModelError, ModelInUse,
                     SegmentExists, SegmentInUse, SequenceTooOld, UnknownModel, UnknownSegment)

__all__ = [
    "Engine", "IngestResult", "SegmentInfo", "Delta",
    "EngineError", "ExpressionError", "SegmentExists", "SegmentInUse", "UnknownSegment",
    "ClockError", "ConfigError", "SequenceTooOld", "ModelError", "UnknownModel", "ModelInUse",
]
