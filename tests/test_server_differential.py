"""The core's differential tests, run through a real ``rtseg serve`` (real Ray, real gRPC) with
1 and with 3 shards: the same expectations, the same reference (tests/reference.py), reached
through ``engine.client.Client`` (which has the embedded ``Engine``'s method names).

Also: the served engine against the embedded ``engine.Engine`` on the same scripts, step by
step: equal results, members and deltas (with equal sequence numbers).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import test_differential as diff
from tests.strategies import (
    DST_BASES_MS,
    Advance,
    Create,
    DeleteSegment,
    DeleteUser,
    Ingest,
    Replace,
    SetTraits,
    scripts,
)
from tests.test_server_support import served_engine_factory

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", params=[1, 3], ids=["1-shard", "3-shards"])
def engine_factory(request, tmp_path_factory):
    """Overrides tests/conftest.py: every engine is the served one, reset to a fresh state."""
    with served_engine_factory(tmp_path_factory, request.param) as make:
        yield make


# The core's regression tests, unchanged, through the served engine.
_REGRESSIONS = [name for name in dir(diff)
                if name.startswith("test_") and name not in (
                    "test_random_scripts", "test_random_scripts_long",
                    "test_random_expressions_on_a_stream", "test_random_scripts_across_dst",
                    "test_random_expressions_on_a_stream_across_dst")]
for _name in _REGRESSIONS:
    globals()[_name] = getattr(diff, _name)

# The value tables' property run is the slowest of the core's tests through gRPC (60 examples:
# ~25 s with 1 shard, ~42 s with 3). The kernels it targets are the embedded run's, which keeps
# its 60 examples; here 15 check that the same values come through the service and its shards.
test_value_tables_with_many_distinct_values = settings(max_examples=15)(
    given(data=st.data())(diff.test_value_tables_with_many_distinct_values.hypothesis.inner_test))


@settings(max_examples=30)
@given(script=scripts())
def test_random_scripts_served(engine_factory, script):
    diff.run_script(engine_factory, script)


@settings(max_examples=20)
@given(script=st.sampled_from(DST_BASES_MS).flatmap(lambda base: scripts(base_ms=base)))
def test_random_scripts_across_dst_served(engine_factory, script):
    """Scripts across a DST change, favouring affinity_score, affinity_rank and active_days
    in a time zone (docs/expressions.md, "Extensions of the spec")."""
    diff.run_script(engine_factory, script)


# ----------------------------------------------------------------------------- vs embedded


def _apply(target, op):
    try:
        if isinstance(op, Ingest):
            if op.columns:
                out = target.ingest_columns(**diff.events_to_columns(op.events))
            else:
                out = target.ingest([dict(e) for e in op.events])
            return ("ingest", out.accepted, out.rejected,
                    [(r.index, r.reason) for r in out.rejections], out.now_ms)
        if isinstance(op, SetTraits):
            out = target.set_traits(op.user_id, dict(op.traits), timestamp_ms=op.timestamp_ms)
            return ("traits", out.accepted, out.rejected,
                    [(r.index, r.reason) for r in out.rejections], out.now_ms)
        if isinstance(op, Advance):
            return ("advance", target.advance_clock(op.now_ms))
        if isinstance(op, Create):
            return ("create", target.create_segment(op.name, op.text))
        if isinstance(op, Replace):
            return ("replace", target.replace_segment(op.name, op.text))
        if isinstance(op, DeleteSegment):
            return ("delete", target.delete_segment(op.name))
        if isinstance(op, DeleteUser):
            view = target.delete_user(op.user_id)
            return ("delete_user", view["known"], sorted(view["segments"]))
    except Exception as err:  # noqa: BLE001 - compared by class and text
        return ("error", type(err).__name__, str(err))
    raise TypeError(op)


def _check_same(embedded, served, script, n_shards: int) -> None:
    seen_e = seen_s = 0
    for step, op in enumerate(script.ops):
        a, b = _apply(embedded, op), _apply(served, op)
        assert a == b, f"step {step} {op!r}: embedded {a}, served {b}"
        assert embedded.now_ms == served.now_ms
        for seg in embedded.list_segments():
            assert served.members(seg.name) == embedded.members(seg.name), f"step {step}"
        de, ds = embedded.deltas(seen_e), served.deltas(seen_s)
        assert [d.sequence for d in de] == [d.sequence for d in ds], f"step {step} {op!r}"
        if n_shards == 1:
            assert de == ds, f"step {step} {op!r}"
        else:  # within one operation, the shards' deltas may be ordered differently
            key = lambda d: (d.segment, d.user_id, d.kind, d.at_ms, d.cause)  # noqa: E731
            assert sorted(map(key, de)) == sorted(map(key, ds)), f"step {step} {op!r}"
        seen_e = de[-1].sequence if de else seen_e
        seen_s = ds[-1].sequence if ds else seen_s


@settings(max_examples=30)
@given(script=scripts())
def test_served_equals_embedded(engine_factory, script):
    from engine import Engine

    embedded = Engine(clock="event", retention=script.retention,
                      max_events_per_type=script.max_events_per_type)
    served = engine_factory("event", script.retention, script.max_events_per_type)
    n_shards = served.stats()["shards"]
    _check_same(embedded, served, script, n_shards)
