"""The one place where engine errors become gRPC status codes (and back, for the client).

The server also sends the error's class name as trailing metadata ``rtseg-error`` so that
``engine.client`` can raise the same exception class as the embedded engine.
"""

from __future__ import annotations

import re

import grpc

from engine import errors as E

ERROR_CLASS_KEY = "rtseg-error"

# Most specific first: the first matching class wins.
_STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (E.ExpressionError, grpc.StatusCode.INVALID_ARGUMENT),
    (E.SegmentExists, grpc.StatusCode.ALREADY_EXISTS),
    (E.UnknownSegment, grpc.StatusCode.NOT_FOUND),
    (E.SegmentInUse, grpc.StatusCode.FAILED_PRECONDITION),
    (E.ModelError, grpc.StatusCode.INVALID_ARGUMENT),
    (E.UnknownModel, grpc.StatusCode.NOT_FOUND),
    (E.ModelInUse, grpc.StatusCode.FAILED_PRECONDITION),
    (E.GoalError, grpc.StatusCode.INVALID_ARGUMENT),
    (E.GoalExists, grpc.StatusCode.ALREADY_EXISTS),
    (E.UnknownGoal, grpc.StatusCode.NOT_FOUND),
    (E.DestinationError, grpc.StatusCode.INVALID_ARGUMENT),
    (E.DestinationExists, grpc.StatusCode.ALREADY_EXISTS),
    (E.UnknownDestination, grpc.StatusCode.NOT_FOUND),
    (E.ClockError, grpc.StatusCode.FAILED_PRECONDITION),
    (E.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (E.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (E.SequenceTooOld, grpc.StatusCode.OUT_OF_RANGE),
    (E.ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (E.EngineError, grpc.StatusCode.FAILED_PRECONDITION),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (TypeError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(status code, message) for an exception raised while serving a call."""
    for cls, code in _STATUS:
        if isinstance(exc, cls):
            return code, str(exc)
    try:  # a shard actor that died or could not be reached
        from ray.exceptions import RayActorError, GetTimeoutError

        if isinstance(exc, (RayActorError, GetTimeoutError)):
            return grpc.StatusCode.UNAVAILABLE, f"a shard is unavailable: {exc}"
    except ImportError:  # pragma: no cover
        pass
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """Abort the call with the status that ``exc`` maps to (raises AbortError)."""
    code, message = status_of(exc)
    # the nearest class the client knows (engine.errors), e.g. Overloaded for a subclass
    cls_name = next((c.__name__ for c in type(exc).__mro__
                     if isinstance(exc, E.EngineError) and getattr(E, c.__name__, None) is c), "")
    if cls_name:
        context.set_trailing_metadata(((ERROR_CLASS_KEY, cls_name),))
    await context.abort(code, message)


_LINE_COL = re.compile(r"^(\d+):(\d+): (.*)$", re.S)


def engine_error_from_rpc(err: grpc.RpcError) -> BaseException:
    """Client side: the engine exception a failed call stands for (the RpcError itself when
    it is not an engine error)."""
    try:
        code, details = err.code(), err.details() or ""
        trailers = dict(err.trailing_metadata() or ())
    except Exception:  # noqa: BLE001 - not a call error
        return err
    cls_name = trailers.get(ERROR_CLASS_KEY, "")
    if cls_name == "ExpressionError" or (code == grpc.StatusCode.INVALID_ARGUMENT and not cls_name):
        m = _LINE_COL.match(details)
        if m:
            return E.ExpressionError(int(m.group(1)), int(m.group(2)), m.group(3))
    cls = getattr(E, cls_name, None) if cls_name else None
    if isinstance(cls, type) and issubclass(cls, E.EngineError) and cls is not E.ExpressionError:
        return cls(details)
    fallback = {
        grpc.StatusCode.ALREADY_EXISTS: E.SegmentExists,
        grpc.StatusCode.NOT_FOUND: E.UnknownSegment,
        grpc.StatusCode.OUT_OF_RANGE: E.SequenceTooOld,
    }.get(code)
    return fallback(details) if fallback else err
