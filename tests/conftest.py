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
ENGINE_MODES = ("embedded",)


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
    if request.param == "embedded":
        engine_cls = import_engine_class()

        def make(clock: str = "event", retention: str | int = "30d", max_events_per_type: int = 4096):
            kwargs = {}
            if max_events_per_type != 4096:  # only ask for the knob when a test needs it
                kwargs["max_events_per_type"] = max_events_per_type
            return engine_cls(clock=clock, retention=retention, **kwargs)

        return make
    raise ValueError(f"unknown engine mode {request.param!r}")


@pytest.fixture
def reference():
    """A fresh ``ReferenceEngine`` with the default configuration (event clock, 30d)."""
    from tests.reference import ReferenceEngine

    return ReferenceEngine(clock="event", retention="30d")
