"""The one error tree of rtseg. The gRPC layer maps these to status codes in one place."""

from __future__ import annotations


class EngineError(Exception):
    """Root of every error rtseg raises on purpose."""


class ExpressionError(EngineError, ValueError):
    """A segment expression that does not parse, does not type-check or cannot be maintained.

    ``str(err)`` is ``"line:col: message"``; ``line`` and ``col`` are 1-based.
    """

    def __init__(self, line: int, col: int, message: str):
        self.line = line
        self.col = col
        self.message = message
        super().__init__(f"{line}:{col}: {message}")

    def __reduce__(self):   # pickles (e.g. from a Ray shard) with its three fields
        return (type(self), (self.line, self.col, self.message))


class SegmentExists(EngineError):
    """A segment with that name already exists (use replace_segment to change it)."""


class UnknownSegment(EngineError, KeyError):
    """No segment has that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown segment"


class ClockError(EngineError):
    """The operation does not fit the engine's clock (advance_clock on a wall clock)."""


class SequenceTooOld(EngineError):
    """A delta sequence number older than the retained delta log was asked for."""


class ConfigError(EngineError, ValueError):
    """A configuration value that cannot be used."""


class SegmentInUse(EngineError):
    """The segment is referenced by other segments; delete or replace those first."""


class ModelError(EngineError, ValueError):
    """A model specification, a model file or a training run that cannot be used; the
    message names the field or the mismatch."""


class UnknownModel(EngineError, KeyError):
    """No model has that name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown model"


class ModelInUse(EngineError):
    """The model is used by segments; delete or replace those first."""


class Unavailable(EngineError):
    """The engine cannot serve the call now (shutting down, a shard down or recovering);
    retrying later is safe (with a batch_id, a retried batch is never applied twice)."""


class LimitExceeded(ConfigError):
    """A request larger than the limits allow as a whole (a batch of more than
    ``max_batch_events`` events, say); the message names the limit and what to do
    (INVALID_ARGUMENT)."""


class Overloaded(EngineError):
    """A bound was reached (a full queue, too many subscribers); retry with backoff."""


class GoalError(EngineError, ValueError):
    """A goal specification that cannot be used; the message names the field
    (INVALID_ARGUMENT)."""


class GoalExists(EngineError):
    """A goal with that name already exists (ALREADY_EXISTS)."""


class UnknownGoal(EngineError, KeyError):
    """No goal has that name (NOT_FOUND)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown goal"


class DestinationError(EngineError, ValueError):
    """A webhook destination that cannot be used (a URL that is not http(s), an unknown
    segment, a batch size out of range); the message names the field (INVALID_ARGUMENT)."""


class DestinationExists(EngineError):
    """A webhook destination with that name already exists (ALREADY_EXISTS)."""


class UnknownDestination(EngineError, KeyError):
    """No webhook destination has that name (NOT_FOUND)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown destination"
