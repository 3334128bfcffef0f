"""Shared fixtures and hypothesis profiles.

Profiles (select with ``HYPOTHESIS_PROFILE=name``): ``default`` and ``ci`` keep the run short;
``thorough`` runs many examples. ``deadline`` is off everywhere: the first call of a Numba
kernel compiles it, and the reference evaluator is slow by design.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("default", max_examples=60, **_COMMON)
settings.register_profile("ci", max_examples=60, print_blob=True, **_COMMON)
settings.register_profile("thorough", max_examples=2_000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The ways the behavioural tests reach an engine (STYLE.md item 10). "grpc" and the Ray modes
# join this list once they exist; every test taking ``engine_factory`` then runs through each.
# "embedded-parts": an embedded engine whose every batch of events is applied in parts of two
# events (ShardCore.apply_events_in_parts, what a served shard does with large batches so
# that reads get in between), which must not change any result.
ENGINE_MODES = ("embedded", "embedded-parts")
PARTS_OF = 2


def apply_events_in_parts(engine, part_events: int = PARTS_OF):
    """Make ``engine``'s core apply every batch of events in parts of ``part_events``."""
    from engine._shard import ShardCore

    class InParts(ShardCore):
        def apply_events(self, cols, now_ms):
            parts = self.apply_events_in_parts(cols, now_ms, part_events)
            while True:
                try:
                    next(parts)
                except StopIteration as done:
                    return done.value

    engine._core.__class__ = InParts
    return engine


def import_engine_class():
    """``engine.Engine``, or skip the calling test when the engine cannot be imported yet.

    Only a failure to import the engine package itself skips (with the reason shown); any
    other error, including one raised while the engine's modules run, fails the test.
    """
    try:
        from engine import Engine
    except ImportError as err:
        missing = getattr(err, "name", None) or ""
        if missing == "engine" or missing.startswith("engine."):
            pytest.skip(f"engine.Engine cannot be imported yet: {err}")
        raise
    return Engine


@pytest.fixture(scope="module", params=ENGINE_MODES)
def engine_factory(request):
    """A callable ``(clock="event", retention="30d", max_events_per_type=4096) -> engine``."""
    if request.param in ("embedded", "embedded-parts"):
        engine_cls = import_engine_class()
        in_parts = request.param == "embedded-parts"

        def make(clock: str = "event", retention: str | int = "30d", max_events_per_type: int = 4096):
            kwargs = {}
            if max_events_per_type != 4096:  # only ask for the knob when a test needs it
                kwargs["max_events_per_type"] = max_events_per_type
            eng = engine_cls(clock=clock, retention=retention, **kwargs)
            return apply_events_in_parts(eng) if in_parts else eng

        return make
    raise ValueError(f"unknown engine mode {request.param!r}")


@pytest.fixture
def reference():
    """A fresh ``ReferenceEngine`` with the default configuration (event clock, 30d)."""
    from tests.reference import ReferenceEngine

    return ReferenceEngine(clock="event", retention="30d")
