"""rtseg: real-time behavioural segmentation.

The embedded API (no server, no Ray)::

    from engine import Engine
    eng = Engine(clock="event", retention="30d")
"""

from ._deltas import Delta
from ._engine import Engine, IngestResult, SegmentInfo
from ._goals import GoalDay, GoalInfo
from ._history import SegmentHistory
from .errors import (ClockError, ConfigError, EngineError, ExpressionError, GoalError, GoalExists,
                     ModelError, ModelInUse, SegmentExists, SegmentInUse, SequenceTooOld, UnknownGoal,
                     UnknownModel, UnknownSegment)

__all__ = [
    "Engine", "IngestResult", "SegmentInfo", "Delta",
    "EngineError", "ExpressionError", "SegmentExists", "SegmentInUse", "UnknownSegment",
    "ClockError", "ConfigError", "SequenceTooOld", "ModelError", "UnknownModel", "ModelInUse",
    "GoalInfo", "GoalDay", "GoalError", "GoalExists", "UnknownGoal", "SegmentHistory",
]
