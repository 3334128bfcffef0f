"""Differential tests: the engine against the reference evaluator (tests/reference.py).

Every operation of a script is applied to both; after EVERY step they must agree on the
operation's result (accepted/rejected counts, rejected indices, ``now_ms``, errors), on the
membership of every segment and user, and on that step's deltas (compared as sorted
``(segment, user_id, kind, cause)`` tuples). The engine's sequence numbers must strictly
increase and, per (segment, user), its deltas must alternate starting with ENTER.

Random tests: ``test_random_scripts`` (operation scripts from tests/strategies.py) and
``test_random_expressions_on_a_stream`` (random segments over a time-ordered stream, with the
clock stopped at, just before and just after every window/threshold crossing); the ``slow``
variant and ``HYPOTHESIS_PROFILE=thorough`` run many more examples. The regression tests below
pin the tricky cases with hand-computed expectations.

The engine is reached through the ``engine_factory`` fixture (tests/conftest.py), so the same
tests run through every execution mode listed there. Tests skip only when ``engine.Engine``
itself cannot be imported.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import EngineError, ExpressionError, SegmentInUse, UnknownSegment
from tests.reference import ReferenceEngine
from tests.strategies import (
    BASE_MS,
    DAY_MS,
    DST_BASES_MS,
    EVENT_TYPES,
    HOUR_MS,
    MINUTE_MS,
    RETENTIONS,
    SECOND_MS,
    USERS,
    Advance,
    Create,
    DeleteSegment,
    DeleteUser,
    Ingest,
    Replace,
    Script,
    SetTraits,
    durations_in,
    events_to_columns,
    expressions,
    extension_expressions,
    scripts,
)

B = BASE_MS
H, D, M = HOUR_MS, DAY_MS, MINUTE_MS


def _name(x) -> str:
    return str(getattr(x, "name", x))


def _delta_tuple(d) -> tuple[str, str, str, str]:
    return (d.segment, d.user_id, _name(d.kind), _name(d.cause))


def _short(op, limit: int = 600) -> str:
    text = repr(op)
    return text if len(text) <= limit else text[: limit - 40] + f" ... ({len(text)} characters)"


def _result_tuple(r) -> tuple:
    return (r.accepted, r.rejected, sorted(x.index for x in r.rejections), r.now_ms)


class Pair:
    """The engine and the reference side by side; every operation is checked on both."""

    def __init__(self, engine_factory, retention="30d", max_events_per_type: int = 4096):
        self.eng = engine_factory(clock="event", retention=retention, max_events_per_type=max_events_per_type)
        self.ref = ReferenceEngine(clock="event", retention=retention, max_events_per_type=max_events_per_type)
        self.eng_seq = 0
        self.ref_seq = 0
        self.users: set[str] = set(USERS)
        self.last_kind: dict[tuple[str, str], str] = {}
        self.ops: list = []

    # ------------------------------------------------------------------ operations

    def ingest(self, events, columns: bool = False):
        return self.apply(Ingest(tuple(events), columns))

    def set_traits(self, user_id, traits, timestamp_ms=None):
        return self.apply(SetTraits(user_id, traits, timestamp_ms))

    def advance(self, now_ms):
        return self.apply(Advance(now_ms))

    def create(self, name, text, expect_error=None):
        return self.apply(Create(name, text, expect_error))

    def replace(self, name, text, expect_error=None):
        return self.apply(Replace(name, text, expect_error))

    def delete_segment(self, name):
        return self.apply(DeleteSegment(name))

    def delete_user(self, user_id):
        return self.apply(DeleteUser(user_id))

    def members(self, name) -> set[str]:
        return self.ref.members(name)

    # ------------------------------------------------------------------ checking

    @staticmethod
    def _call(target, op):
        """Apply ``op``; returns (result, EngineError or None). Other exceptions propagate."""
        try:
            if isinstance(op, Ingest):
                if op.columns:
                    return target.ingest_columns(**events_to_columns(op.events)), None
                return target.ingest([dict(e) for e in op.events]), None
            if isinstance(op, SetTraits):
                return target.set_traits(op.user_id, dict(op.traits), timestamp_ms=op.timestamp_ms), None
            if isinstance(op, Advance):
                return target.advance_clock(op.now_ms), None
            if isinstance(op, Create):
                return target.create_segment(op.name, op.text), None
            if isinstance(op, Replace):
                return target.replace_segment(op.name, op.text), None
            if isinstance(op, DeleteSegment):
                return target.delete_segment(op.name), None
            if isinstance(op, DeleteUser):
                return target.delete_user(op.user_id), None
        except EngineError as err:
            return None, err
        raise TypeError(f"unknown operation {op!r}")

    def _where(self) -> str:
        lines = [f"  {i + 1}: {_short(op)}" for i, op in enumerate(self.ops[-8:], start=max(0, len(self.ops) - 8))]
        return f"after step {len(self.ops)} (last operations:\n" + "\n".join(lines) + ")"

    def apply(self, op) -> list[tuple[str, str, str, str]]:
        """Apply ``op`` to both, check everything; returns the step's deltas (sorted tuples)."""
        self.ops.append(op)
        if isinstance(op, SetTraits):
            self.users.add(op.user_id)
        elif isinstance(op, Ingest):
            self.users.update(e.get("user_id") for e in op.events if isinstance(e.get("user_id"), str))
        ref_out, ref_err = self._call(self.ref, op)
        eng_out, eng_err = self._call(self.eng, op)
        where = self._where()

        if isinstance(op, (Create, Replace)):
            if op.expect_error:
                assert isinstance(ref_err, ExpressionError), f"the reference accepted a bad expression {where}"
            elif op.expect_error is not None:
                assert ref_err is None, f"the generated expression was refused: {ref_err} {where}"
        if ref_err is not None or eng_err is not None:
            assert eng_err is not None, f"the engine did not raise {type(ref_err).__name__}: {ref_err} {where}"
            assert ref_err is not None, f"the engine raised {type(eng_err).__name__}: {eng_err} {where}"
            assert isinstance(eng_err, type(ref_err)), (
                f"the engine raised {type(eng_err).__name__} ({eng_err}), "
                f"the reference {type(ref_err).__name__} ({ref_err}) {where}"
            )
        elif isinstance(op, (Ingest, SetTraits)):
            assert _result_tuple(eng_out) == _result_tuple(ref_out), (
                f"ingest result (accepted, rejected, rejected indices, now_ms) differs: "
                f"engine {_result_tuple(eng_out)}, reference {_result_tuple(ref_out)} {where}"
            )
        elif isinstance(op, Advance):
            assert eng_out == ref_out, f"advance_clock returned {eng_out}, reference {ref_out} {where}"
        elif isinstance(op, DeleteSegment):
            with pytest.raises(UnknownSegment):
                self.eng.members(op.name)

        assert self.eng.now_ms == self.ref.now_ms, f"now_ms: engine {self.eng.now_ms}, reference {self.ref.now_ms} {where}"
        for name in self.ref.segment_names():
            got, want = set(self.eng.members(name)), self.ref.members(name)
            assert got == want, (
                f"members({name!r}) = {self.ref.segment_text(name)!r}: engine has extra {sorted(got - want)}, "
                f"misses {sorted(want - got)} {where}"
            )
        for uid in sorted(self.users | set(self.ref.known_users())):
            got, want = list(self.eng.user_segments(uid)), self.ref.user_segments(uid)
            assert got == want, f"user_segments({uid!r}): engine {got}, reference {want} {where}"

        eng_new = list(self.eng.deltas(after_sequence=self.eng_seq))
        ref_new = self.ref.deltas(after_sequence=self.ref_seq)
        seqs = [d.sequence for d in eng_new]
        assert all(a < b for a, b in zip([self.eng_seq] + seqs, seqs)), f"sequence numbers {seqs} {where}"
        got = sorted(_delta_tuple(d) for d in eng_new)
        want = sorted(_delta_tuple(d) for d in ref_new)
        assert got == want, (
            f"deltas differ: engine only {sorted(set(got) - set(want))}, "
            f"reference only {sorted(set(want) - set(got))} (engine {got}, reference {want}) {where}"
        )
        for d in eng_new:
            key = (d.segment, d.user_id)
            kind = _name(d.kind)
            assert kind == ("EXIT" if self.last_kind.get(key) == "ENTER" else "ENTER"), (
                f"{kind} for {key} after {self.last_kind.get(key)} {where}"
            )
            self.last_kind[key] = kind
        if eng_new:
            self.eng_seq = eng_new[-1].sequence
        if ref_new:
            self.ref_seq = ref_new[-1].sequence
        return want


def run_script(engine_factory, script: Script) -> Pair:
    pair = Pair(engine_factory, script.retention, script.max_events_per_type)
    for op in script.ops:
        pair.apply(op)
    return pair


# ----------------------------------------------------------------------------- random scripts


@given(script=scripts())
def test_random_scripts(engine_factory, script):
    run_script(engine_factory, script)


@pytest.mark.slow
@settings(max_examples=1_500)
@given(script=scripts(max_steps=40))
def test_random_scripts_long(engine_factory, script):
    run_script(engine_factory, script)


@given(script=st.sampled_from(DST_BASES_MS).flatmap(lambda base: scripts(base_ms=base)))
def test_random_scripts_across_dst(engine_factory, script):
    """Scripts whose timestamps start at a DST change (23 h and 25 h local days, a fall-back at
    local midnight, a 30 min step), where active_days(E, W, "ZONE") counts local days."""
    run_script(engine_factory, script)


def _stream(draw, n_events: int, grid_ms: int, span: int, base: int = B) -> list[dict]:
    """Events on a time grid (so that they meet window bounds exactly), over few users, the
    first user and the type "view" more often (so that a small cap overflows)."""
    out = []
    for _ in range(n_events):
        etype = draw(st.sampled_from(EVENT_TYPES + ("view",)))
        props: dict = {}
        if etype != "open":
            if draw(st.integers(0, 4)):
                props["sku"] = draw(st.sampled_from(("a", "b", "c", "a", 1.0, True, "1")))
            if draw(st.integers(0, 4)):
                props["price"] = draw(st.sampled_from((1.0, 2.5, 10.0, 100.0)))
        if etype == "buy" and draw(st.booleans()):
            props["promo"] = draw(st.booleans())
        out.append(
            {
                "user_id": draw(st.sampled_from(USERS[:3] + USERS[:1])),
                "type": etype,
                "timestamp_ms": base + draw(st.integers(0, span)) * grid_ms,
                "value": draw(st.sampled_from((0.0, 1.0, 2.5, 40.0))),
                "properties": props,
            }
        )
    return out


MAX_CROSSINGS = 80


@given(data=st.data())
def test_random_expressions_on_a_stream(engine_factory, data):
    """Random segments over a stream that arrives in time order (some events late), with the
    clock also stopped just before, at and just after moments at which an event crosses a
    window bound, a ``since`` threshold or the retention, or a trait timestamp crosses an
    ``until``/``since`` bound. Everything is drawn before the first operation."""
    _stream_case(engine_factory, data, B)


@given(data=st.data())
def test_random_expressions_on_a_stream_across_dst(engine_factory, data):
    """The same over a stream that starts an hour or two before a DST change."""
    base = data.draw(st.sampled_from(DST_BASES_MS), label="dst_base")
    _stream_case(engine_factory, data, base - data.draw(st.sampled_from((0, H, 2 * H, 6 * H)), label="before"),
                 extensions=True)


def _stream_case(engine_factory, data, base: int, extensions: bool = False) -> None:
    retention, retention_ms = data.draw(st.sampled_from(RETENTIONS), label="retention")
    cap = data.draw(st.sampled_from((4096, 4096, 3)), label="max_events_per_type")
    texts: list[str] = []
    for i in range(3):
        depth = data.draw(st.sampled_from((0, 0, 1, 2)), label="depth")
        names = tuple(f"s{j}" for j in range(i))
        gen = extension_expressions if extensions and i < 2 else expressions
        texts.append(data.draw(gen(retention_ms=retention_ms, segments=names, max_depth=depth), label=f"s{i}"))
    grid = data.draw(st.sampled_from((SECOND_MS, MINUTE_MS, 15 * MINUTE_MS, HOUR_MS)), label="grid_ms")
    span = min(200, 3 * D // grid)
    events = _stream(data.draw, data.draw(st.integers(3, 40), label="n_events"), grid, span, base)
    traits = {}
    for u in USERS[:3]:
        traits[u] = {
            "country": data.draw(st.sampled_from(("TR", "DE")), label="country"),
            "signup_at": base + data.draw(st.integers(0, span), label="signup") * grid,
            "score_x": 2.5,
            "lat": 41.0,
            "lon": data.draw(st.sampled_from((29.0, 29.01, 29.05)), label="lon"),
        }
    rnd = data.draw(st.randoms(use_true_random=False), label="random")

    durations = set().union(*(durations_in(t) for t in texts)) | {retention_ms}
    moments = {e["timestamp_ms"] for e in events} | {t["signup_at"] for t in traits.values()}
    crossings = sorted({t + sign * d + k for t in moments for d in durations for sign in (1, -1) for k in (-1, 0, 1)})
    crossings = sorted(rnd.sample(crossings, min(len(crossings), MAX_CROSSINGS)))
    # (when, order, what): each event arrives at its timestamp or, one in four, later
    timeline = [(c, 0, c) for c in crossings]
    for e in events:
        late = rnd.choice((0, 0, 0, grid, 7 * grid, 60 * grid))
        timeline.append((e["timestamp_ms"] + late, 1, e))
    timeline.sort(key=lambda x: (x[0], x[1]))

    pair = Pair(engine_factory, retention=retention, max_events_per_type=cap)
    for i, text in enumerate(texts):
        pair.create(f"s{i}", text)
    for u, t in traits.items():
        pair.set_traits(u, t)
    batch: list[dict] = []
    for i, (when, order, what) in enumerate(timeline):
        if order == 0:
            pair.advance(what)
            continue
        batch.append(what)
        if i + 1 == len(timeline) or timeline[i + 1][:2] != (when, 1):
            pair.ingest(batch)
            batch = []


# ----------------------------------------------------------------------------- regressions


def ev(uid, etype, t, value=None, **props):
    e = {"user_id": uid, "type": etype, "timestamp_ms": t}
    if value is not None:
        e["value"] = value
    if props:
        e["properties"] = props
    return e


def test_window_boundary_exactly_at_now_minus_w(engine_factory):
    p = Pair(engine_factory)
    p.create("recent", "count(view, 1h) >= 1")
    assert p.ingest([ev("u", "view", B)]) == [("recent", "u", "ENTER", "EVENT")]
    p.advance(B + H - 1)
    assert p.members("recent") == {"u"}
    assert p.advance(B + H) == [("recent", "u", "EXIT", "TIME")]  # t == now - W is outside
    p.ingest([ev("v", "view", B + H)])
    assert p.members("recent") == {"v"}


def test_window_counts_at_the_boundary(engine_factory):
    p = Pair(engine_factory)
    p.create("two", "count(view, 15m) == 2")
    p.ingest([ev("u", "view", B), ev("u", "view", B + 15 * M - 1), ev("u", "view", B + 15 * M)])
    assert p.members("two") == {"u"}
    p.advance(B + 30 * M - 2)
    assert p.members("two") == {"u"}
    p.advance(B + 30 * M - 1)
    assert p.members("two") == set()


def test_since_crossing_gt_vs_ge(engine_factory):
    p = Pair(engine_factory)
    p.create("gt", "since(cart) > 15m")
    p.create("ge", "since(cart) >= 15m")
    p.create("abandoned", "since(cart) >= 15m and since(buy) > since(cart)")
    p.ingest([ev("u", "cart", B)])
    p.advance(B + 15 * M - 1)
    assert p.ref.user_segments("u") == []
    assert sorted(p.advance(B + 15 * M)) == [("abandoned", "u", "ENTER", "TIME"), ("ge", "u", "ENTER", "TIME")]
    assert p.advance(B + 15 * M + 1) == [("gt", "u", "ENTER", "TIME")]
    p.ingest([ev("u", "buy", B + 16 * M)])
    assert p.members("abandoned") == set()


def test_trial_until_between(engine_factory):
    p = Pair(engine_factory)
    p.create("trial_ending", "until(trait.trial_end) between 0 and 3d")
    p.ingest([ev("u", "open", B)])
    p.set_traits("u", {"trial_end": B + 5 * D})
    p.set_traits("v", {"trial_end": "soon"})  # not a number: null
    assert p.members("trial_ending") == set()
    p.advance(B + 2 * D - 1)
    assert p.members("trial_ending") == set()
    assert p.advance(B + 2 * D) == [("trial_ending", "u", "ENTER", "TIME")]  # until == 3d
    p.advance(B + 5 * D)  # until == 0
    assert p.members("trial_ending") == {"u"}
    assert p.advance(B + 5 * D + 1) == [("trial_ending", "u", "EXIT", "TIME")]
    p.set_traits("u", {"trial_end": B + 6 * D})
    assert p.members("trial_ending") == {"u"}


def test_late_event_inserted_before_others(engine_factory):
    p = Pair(engine_factory)
    p.create("funnel", "sequence(view, cart, buy, 1d)")
    p.create("first_long_ago", "since_first(view) >= 1h")
    p.create("fav_a", 'affinity(view.sku, 1d) == "a"')
    p.ingest([ev("u", "cart", B), ev("u", "buy", B + M), ev("u", "view", B + 2 * M, sku="b")])
    assert p.ref.user_segments("u") == []
    p.ingest([ev("u", "view", B - H, sku="a"), ev("u", "view", B - H, sku="a")])  # late, before the cart
    assert p.ref.user_segments("u") == ["fav_a", "first_long_ago", "funnel"]


def test_equal_timestamps_keep_arrival_order(engine_factory):
    p = Pair(engine_factory, max_events_per_type=2)
    p.create("fav_y", 'affinity(buy.cat, 1d) == "y"')
    p.create("seq", "sequence(buy, buy, 1d)")
    p.ingest([ev("u", "buy", B, cat="x"), ev("u", "buy", B, cat="y")])
    assert p.members("fav_y") == {"u"} and p.members("seq") == set()
    p.ingest([ev("u", "buy", B, cat="x")])  # the cap drops the earlier x: y, x remain; x is later
    assert p.members("fav_y") == set()
    p.ingest([ev("u", "buy", B + 1, cat="y")])
    assert p.members("fav_y") == {"u"} and p.members("seq") == {"u"}


def test_cap_4097_events_of_one_type(engine_factory):
    p = Pair(engine_factory, retention="30d")
    p.create("full", "count(view, 30d) == 4096")
    p.create("over", "count(view, 30d) > 4096")
    p.create("oldest_kept", "since_first(view) == 4095")
    p.ingest([ev("u", "view", B - 4096 + i) for i in range(4097)] + [ev("u", "buy", B)])
    assert p.ref.user_segments("u") == ["full", "oldest_kept"]
    p.ingest([ev("u", "view", B - 5000)])  # older than every kept event: it is the one dropped
    assert p.ref.user_segments("u") == ["full", "oldest_kept"]
    p.ingest([ev("u", "view", B)])
    assert p.ref.user_segments("u") == ["full"]
    stats = getattr(p.eng, "stats", None)
    if stats is not None and "events_dropped" in stats():
        assert stats()["events_dropped"] == p.ref.stats()["events_dropped"] == 3


def test_small_cap_in_windows(engine_factory):
    p = Pair(engine_factory, max_events_per_type=3)
    p.create("c3", "count(view, 1h) == 3")
    p.create("sum", "sum(view.value, 1h) == 6")
    p.ingest([ev("u", "view", B + i, 1.0) for i in range(3)])
    p.ingest([ev("u", "view", B + 10, 4.0), ev("u", "view", B, 100.0)])  # the 100 is dropped at once
    assert p.ref.user_segments("u") == ["c3", "sum"]


def test_affinity_ties(engine_factory):
    p = Pair(engine_factory)
    p.create("shoes", 'affinity(buy.cat, 30d) == "shoes"')
    p.create("bags", 'affinity(buy.cat, 30d) == "bags"')
    p.ingest([ev("u", "buy", B, cat="shoes"), ev("u", "buy", B + 1, cat="bags")])
    assert p.ref.user_segments("u") == ["bags"]
    p.ingest([ev("u", "buy", B + 2, cat="shoes")])
    assert p.ref.user_segments("u") == ["shoes"]
    p.ingest([ev("u", "buy", B - 1, cat="bags")])  # 2 vs 2, the latest shoes is later
    assert p.ref.user_segments("u") == ["shoes"]
    p.ingest([ev("u", "buy", B + 2, cat="bags")])  # 2 vs 3
    assert p.ref.user_segments("u") == ["bags"]
    p.ingest([ev("u", "buy", B + 2, cat="shoes"), ev("u", "buy", B + 2, cat="shoes")])  # 4 vs 3
    assert p.ref.user_segments("u") == ["shoes"]


def test_retention_boundary_rejections(engine_factory):
    p = Pair(engine_factory, retention="2d")
    p.create("any", "count(view, 2d) >= 1")
    p.ingest([ev("u", "view", B), ev("v", "view", B - 3 * D)])  # the clock was 0: both accepted
    assert p.members("any") == {"u"}
    out = p.ingest([ev("w", "view", B - 2 * D), ev("w", "view", B - 2 * D + 1), ev("x", "view", B)])
    assert out == [("any", "w", "ENTER", "EVENT"), ("any", "x", "ENTER", "EVENT")]
    assert p.advance(B + 1) == [("any", "w", "EXIT", "TIME")]
    assert p.members("any") == {"u", "x"}


def test_since_at_the_retention_bound(engine_factory):
    p = Pair(engine_factory, retention="2d")
    p.create("seen", "since(view) <= 2d")
    p.create("first", "since_first(view) >= 2d")
    p.ingest([ev("u", "view", B)])
    p.advance(B + 2 * D - 1)
    assert p.members("seen") == {"u"} and p.members("first") == set()
    p.advance(B + 2 * D)  # t == now - retention: forgotten, since is +inf
    assert p.members("seen") == set() and p.members("first") == {"u"}


def test_bad_events_are_rejected_one_by_one(engine_factory):
    p = Pair(engine_factory)
    p.ingest([ev("u", "view", B)])
    p.ingest(
        [
            ev("", "view", B),
            {**ev("u", "view", B), "extra": 1},
            {"user_id": "u", "type": "view", "timestamp_ms": B, "properties": {"value": 2.0}},
            ev("u", "view", B - 30 * D),
            ev("u", "view", B - 30 * D + 1, 2.5, sku="a"),
        ]
    )
    p.ingest([ev("", "view", B), ev("u", "buy", B + 1, 1.0, sku="b")], columns=True)


def test_causes_event_and_time_in_one_batch(engine_factory):
    p = Pair(engine_factory)
    p.create("recent", "count(view, 1h) >= 1")
    p.ingest([ev("u", "view", B), ev("v", "view", B)])
    out = p.ingest([ev("u", "open", B + H), ev("w", "view", B + H)])
    assert out == [("recent", "u", "EXIT", "EVENT"), ("recent", "v", "EXIT", "TIME"), ("recent", "w", "ENTER", "EVENT")]
    out = p.set_traits("w", {"plan": "pro"}, timestamp_ms=B + 2 * H)
    assert out == [("recent", "w", "EXIT", "TRAIT")]


def test_null_rules(engine_factory):
    p = Pair(engine_factory)
    p.create("not_in", 'trait.plan not in ["pro"]')
    p.create("not_of_in", 'not (trait.plan in ["pro"])')
    p.create("no_avg", "not (avg(buy.value, 30d) > 5)")
    p.create("mismatch", "trait.plan == 3")
    p.create("mismatch_ne", "trait.plan != 3")
    p.set_traits("u", {"country": "TR"})
    assert p.ref.user_segments("u") == ["no_avg", "not_of_in"]
    p.set_traits("u", {"plan": "free"})
    assert p.ref.user_segments("u") == ["no_avg", "not_in", "not_of_in"]


def test_arithmetic_edge_cases(engine_factory):
    p = Pair(engine_factory)
    p.create("aov", "sum(buy.value, 7d) / count(buy, 7d) > 10")
    p.create("no_aov", "not (sum(buy.value, 7d) / count(buy, 7d) <= 10)")
    p.create("inf", "since(buy) - since(view) == 0")
    p.create("never", "since(view) > 1e300")
    p.ingest([ev("u", "open", B), ev("v", "buy", B, 30.0)])
    assert p.members("aov") == {"v"}
    assert p.members("no_aov") == {"u", "v"}
    assert p.members("inf") == set()
    assert p.members("never") == {"u", "v"}


def test_a_null_quotient_or_product_that_time_defines(engine_factory):
    """``x / since(...)`` is null while ``since`` is 0, and ``since(...) * inf`` likewise, and
    both are defined a moment later: the user must be checked again then (found by the
    thorough profile of the random streams)."""
    p = Pair(engine_factory)
    p.create("q", "(since(trait.signup_at) / since(trait.signup_at)) != 0")
    p.advance(B - M)
    for u in ("u", "v"):
        p.set_traits(u, {"signup_at": B})
    assert p.members("q") == {"u", "v"}
    p.create("m", "(since(view) * since(cart)) != 0")   # 0 * inf: null now, inf a moment later
    p.create("n", "(since(cart) * since(trait.signup_at)) != 0")   # -inf, null at B, then inf
    p.ingest([ev("u", "view", B)])                    # the clock at the signup: 0 / 0
    assert p.members("q") == set() and p.members("m") == {"v"} and p.members("n") == set()
    assert sorted(p.advance(B + 1)) == [("m", "u", "ENTER", "TIME"), ("n", "u", "ENTER", "TIME"),
                                        ("n", "v", "ENTER", "TIME"), ("q", "u", "ENTER", "TIME"),
                                        ("q", "v", "ENTER", "TIME")]


def test_sequence_needs_strictly_increasing_times(engine_factory):
    p = Pair(engine_factory)
    p.create("ab", "sequence(view, buy, 1h)")
    p.create("aa", "sequence(view, view, 1h)")
    p.ingest([ev("u", "view", B), ev("u", "buy", B), ev("v", "view", B), ev("v", "view", B)])
    assert p.members("ab") == set() and p.members("aa") == set()
    p.ingest([ev("u", "buy", B + 1), ev("v", "view", B + 1)])
    assert p.members("ab") == {"u"} and p.members("aa") == {"v"}
    p.advance(B + H)
    assert p.members("ab") == set()


def test_active_days_cross_utc_midnight(engine_factory):
    midnight = (B // D + 1) * D
    p = Pair(engine_factory)
    p.create("two_days", "active_days(open, 1d) >= 2")
    p.ingest([ev("u", "open", midnight - 1), ev("u", "open", midnight)])
    assert p.members("two_days") == {"u"}
    p.advance(midnight - 1 + D)
    assert p.members("two_days") == set()


def test_active_days_in_a_time_zone_across_dst(engine_factory):
    """docs/expressions.md, "Extensions of the spec": local days of the zone, 23 h and 25 h long
    on DST changes, and in Santiago a fall-back at local midnight."""
    mar10, mar11 = 1_710_046_800_000, 1_710_129_600_000  # New York midnights: a 23 h day
    assert mar11 - mar10 == 23 * H
    p = Pair(engine_factory)
    p.create("ny2", 'active_days(open, 2d, "America/New_York") >= 2')
    p.create("utc2", "active_days(open, 2d) >= 2")
    p.create("ist2", 'active_days(open where exists(value), 2d, "Europe/Istanbul") >= 2')
    p.ingest([ev("u", "open", mar10 + 30 * M), ev("u", "open", mar11 - 1)])  # both March 10 in New York
    assert (p.members("ny2"), p.members("utc2")) == (set(), {"u"})
    p.ingest([ev("u", "open", mar11)])
    assert p.members("ny2") == {"u"}
    p.advance(mar10 + 30 * M + 2 * D)  # the first event leaves: still two New York days
    assert p.members("ny2") == {"u"}
    p.advance(mar11 - 1 + 2 * D)
    assert p.members("ny2") == set()

    nov5, nov6 = 1_699_156_800_000, 1_699_246_800_000  # New York midnights: a 25 h day
    assert nov6 - nov5 == 25 * H
    p = Pair(engine_factory)  # the clock cannot go back to November
    p.create("ny2", 'active_days(open, 2d, "America/New_York") >= 2')
    p.create("utc2", "active_days(open, 2d) >= 2")
    p.ingest([ev("v", "open", nov5), ev("v", "open", nov6 - 1)])
    assert "v" not in p.members("ny2") and "v" in p.members("utc2")
    p.ingest([ev("v", "open", nov6)])
    assert "v" in p.members("ny2")

    p.create("scl2", 'active_days(open, 2d, "America/Santiago") >= 2')
    fall = 1_712_458_800_000  # 2024-04-07T03:00Z: 00:00 -03 becomes 23:00 -04 on April 6
    p.ingest([ev("w", "open", fall - 1), ev("w", "open", fall), ev("w", "open", fall + H - 1)])
    assert "w" not in p.members("scl2")  # all on April 6 in Santiago
    p.ingest([ev("w", "open", fall + H)])
    assert "w" in p.members("scl2")


def test_affinity_score_and_rank(engine_factory):
    """Recency-weighted share and count rank of a value; rank 1 is exactly affinity()."""
    from engine.expr import parse

    p = Pair(engine_factory)
    for name, text in (
        ("rank1", 'affinity_rank(buy.cat, "shoes", 2d) == 1'),
        ("aff", 'affinity(buy.cat, 2d) == "shoes"'),
        ("rank2", 'affinity_rank(buy.cat, "shoes", 2d) == 2'),
        ("share", 'affinity_score(buy.cat, "shoes", 2d) > 0.5'),
        ("half", 'affinity_score(buy.cat, "shoes", 2d) == 0.5'),
        ("num", "affinity_score(buy.price where price > 1, 10, 2d) >= 0.75"),
        ("none", 'not (affinity_score(buy.cat, "shoes", 2d) >= 0)'),
    ):
        p.create(name, text)

    def share(uid):
        return p.ref.evaluate(uid, parse('affinity_score(buy.cat, "shoes", 2d)'))

    def check_rank1_is_affinity():
        assert p.members("rank1") == p.members("aff")

    p.ingest([ev("ann", "buy", B + H, cat="shoes"), ev("ann", "buy", B + 2 * H, cat="shoes"),
              ev("bob", "buy", B + H, cat="bags"), ev("bob", "buy", B + 2 * H, cat="bags"),
              ev("cem", "buy", B + H, cat="shoes"), ev("cem", "buy", B + H, cat="bags"),
              ev("dan", "buy", B + H, price=10.0), ev("dan", "buy", B + H, price=1.0)])
    check_rank1_is_affinity()
    assert p.members("rank1") == {"ann"} and p.members("rank2") == {"cem"}  # cem: a tie, bags later
    assert p.members("half") == {"cem"} and share("cem") == 0.5
    assert p.members("none") == {"dan"} and p.members("num") == {"dan"}  # dan has no cat at all
    p.ingest([ev("ann", "buy", B + 47 * H, cat="bags"), ev("bob", "buy", B + 46 * H, cat="shoes")])
    check_rank1_is_affinity()
    assert share("ann") == (2 ** (-46 / 24) + 2 ** (-45 / 24)) / (2 ** (-46 / 24) + 2 ** (-45 / 24) + 1.0)
    assert p.members("share") == {"bob"} and p.members("rank1") == {"ann"}
    for t in (B + 2 * D, B + 2 * D + H, B + 2 * D + H + 1, B + 2 * D + 2 * H, B + 2 * D + 2 * H + 1,
              B + 4 * D + 46 * H, B + 4 * D + 47 * H):
        p.advance(t)  # departures move both functions; nothing else does
        check_rank1_is_affinity()
    assert p.members("none") == {"ann", "bob", "cem", "dan"}
    # kinds never meet: "1" is not 1, and a bool is not a string
    p.create("one", 'affinity_score(buy.cat, "1", 2d) == 1 and affinity_rank(buy.cat, 1, 2d) == 2')
    p.ingest([ev("eve", "buy", p.ref.now_ms, cat="1"), ev("eve", "buy", p.ref.now_ms, cat="1"),
              ev("eve", "buy", p.ref.now_ms - 1, cat=1.0)])
    assert p.members("one") == set()
    p.ingest([ev("eve", "buy", p.ref.now_ms - 2, cat=True)])
    assert p.ref.evaluate("eve", parse('affinity_rank(buy.cat, "1", 2d)')) == 1.0


@settings(max_examples=60)
@given(data=st.data())
def test_value_tables_with_many_distinct_values(engine_factory, data):
    """distinct / top_count / affinity over windows holding more distinct values than the
    kernel searches one by one (SMALL_VALUES, 16): strings then get one slot each, and the
    numbers and booleans mixed among them are still searched one by one (past 16 of those,
    the values are sorted). Checked after every batch and at every clock stop."""
    p = Pair(engine_factory)
    for name, text in (
        ("many", "distinct(buy.cat, 1d) >= 18"),
        ("few", "distinct(buy.cat where price > 1, 1d) < 12"),
        ("top", "top_count(buy.cat, 1d) >= 3"),
        ("aff", 'affinity(buy.cat, 1d) == "c3"'),
        ("num", "affinity(buy.cat, 1d) == 7"),
        ("rank", 'affinity_rank(buy.cat, "c1", 1d) <= 2'),
    ):
        p.create(name, text)
    strings = [f"c{k}" for k in range(data.draw(st.integers(10, 40), label="strings"))]
    numbers = [float(k) for k in range(data.draw(st.sampled_from((0, 3, 20)), label="numbers"))]
    value = st.sampled_from(strings + numbers + [True]) if numbers else st.sampled_from(strings)
    now = B
    for _ in range(data.draw(st.integers(1, 6), label="batches")):
        batch = []
        for _ in range(data.draw(st.integers(1, 80), label="events")):
            props = {"price": data.draw(st.sampled_from((1.0, 2.0)), label="price")}
            if data.draw(st.integers(0, 9), label="has_cat"):
                props["cat"] = data.draw(value, label="cat")
            batch.append(ev(data.draw(st.sampled_from(USERS[:2] + USERS[:1]), label="user"), "buy",
                            now - data.draw(st.integers(0, 20), label="age") * H, **props))
        p.ingest(batch)
        now += data.draw(st.sampled_from((M, H, 6 * H, D)), label="step")
        p.advance(now)


def test_segments_reference_replace_and_delete(engine_factory):
    p = Pair(engine_factory)
    p.ingest([ev("u", "buy", B, 50.0), ev("v", "buy", B, 5.0)])
    p.create("big", "sum(buy.value, 1d) > 10")
    p.create("small", 'not segment("big") and count(buy, 1d) >= 1')
    assert p.members("small") == {"v"}
    out = p.replace("big", "sum(buy.value, 1d) > 100")
    assert out == [("big", "u", "EXIT", "SEGMENT_CREATED"), ("small", "u", "ENTER", "SEGMENT_CREATED")]
    p.replace("big", 'segment("small")', expect_error=True)  # a cycle
    p.create("bad", 'segment("nope")', expect_error=True)
    p.create("long", "count(buy, 31d) > 0", expect_error=True)
    p.create("big", "true")  # SegmentExists on both
    p.delete_segment("big")  # SegmentInUse on both
    assert isinstance(Pair._call(p.ref, DeleteSegment("big"))[1], SegmentInUse)
    out = p.delete_segment("small")
    assert out == [("small", "u", "EXIT", "SEGMENT_DELETED"), ("small", "v", "EXIT", "SEGMENT_DELETED")]
    p.delete_segment("small")  # UnknownSegment on both
    p.create("small", "count(buy, 1d) >= 1")
    assert p.members("small") == {"u", "v"}


def test_delete_user_and_come_back(engine_factory):
    p = Pair(engine_factory)
    p.create("buyers", "count(buy, 1d) >= 1")
    p.create("everyone", "true")
    p.ingest([ev("u", "buy", B)])
    p.set_traits("u", {"plan": "pro"})
    assert p.delete_user("u") == [("buyers", "u", "EXIT", "USER_DELETED"), ("everyone", "u", "EXIT", "USER_DELETED")]
    p.delete_user("u")
    p.set_traits("u", {"country": "TR"})
    assert p.ref.user_segments("u") == ["everyone"]


def test_backfill_covers_known_users_only(engine_factory):
    p = Pair(engine_factory)
    p.ingest([ev("u", "view", B), ev("", "view", B), ev("old", "view", B - 31 * D)])
    p.set_traits("t", {"plan": None})
    p.set_traits("t2", {"plan": "pro"})
    p.set_traits("t2", {"plan": None})
    out = p.create("no_views", "count(view, 1d) == 0")
    assert out == [("no_views", "old", "ENTER", "SEGMENT_CREATED"), ("no_views", "t", "ENTER", "SEGMENT_CREATED"),
                   ("no_views", "t2", "ENTER", "SEGMENT_CREATED")]


def test_near(engine_factory):
    p = Pair(engine_factory)
    p.create("near2", "near(41.01, 29.0, 2km)")
    p.create("near1", "near(41.01, 29.0, 1km)")
    p.create("near_mi", "near(41.0, 29.02, 1mi)")
    p.set_traits("u", {"lat": 41.0, "lon": 29.0})  # 1111.95 m from (41.01, 29.0)
    p.set_traits("v", {"lat": 41.0})
    assert p.ref.user_segments("u") == ["near2"]
    p.set_traits("u", {"lon": 29.01})
    assert p.ref.user_segments("u") == ["near2", "near_mi"]
    p.set_traits("u", {"lat": None})
    assert p.ref.user_segments("u") == []


def test_filters_and_property_kinds(engine_factory):
    p = Pair(engine_factory)
    p.create("promo_buyer", "count(buy where promo == true, 1d) >= 1")
    p.create("no_promo", "count(buy where not (promo == true), 1d) >= 1")
    p.create("kinds", "distinct(view.sku, 1d) == 3")
    p.create("cheap", "sum(view.price where sku in [\"a\", \"b\"], 1d) == 3.5")
    p.ingest(
        [
            ev("u", "buy", B, promo=True),
            ev("v", "buy", B),
            ev("u", "view", B, sku="1", price=1.0),
            ev("u", "view", B, sku=1.0, price="2"),
            ev("u", "view", B, sku=True, price=2.5),
            ev("v", "view", B, sku="a", price=1.0),
            ev("v", "view", B, sku="b", price=2.5),
            ev("v", "view", B, sku="c", price=100.0),
        ]
    )
    assert p.ref.user_segments("u") == ["kinds", "promo_buyer"]
    assert p.ref.user_segments("v") == ["cheap", "kinds", "no_promo"]


@pytest.mark.parametrize("columns", [False, True])
def test_columns_and_dicts_agree(engine_factory, columns):
    p = Pair(engine_factory, retention="2d")
    p.create("s", 'count(view where sku == "a", 1d) >= 2 and max(view.price, 1d) > 5')
    p.ingest([ev("u", "view", B, 1.0, sku="a", price=10.0), ev("", "view", B)], columns=columns)
    p.ingest([ev("u", "view", B - 3 * D, sku="a"), ev("u", "view", B + 1, sku="a")], columns=columns)
    assert p.members("s") == {"u"}


def test_empty_trait_update_is_a_trait_update(engine_factory):
    """An accepted update with no traits still makes its user known, and the cause is TRAIT
    ("TRAIT for users with a trait update in the batch")."""
    p = Pair(engine_factory)
    p.create("no_views", "count(view, 1d) == 0")
    assert p.set_traits("u", {}, timestamp_ms=B) == [("no_views", "u", "ENTER", "TRAIT")]
    assert p.set_traits("v", {"plan": None}) == [("no_views", "v", "ENTER", "TRAIT")]


def test_not_in_with_a_kind_mismatch_is_false(engine_factory):
    """``x not in [...]`` is a comparison: with a value of another kind it is false, as
    ``x != item`` is (docs/semantics.md, Values), and with null it is null."""
    p = Pair(engine_factory)
    p.create("ne", "trait.country != 3")
    p.create("not_in", "trait.country not in [1, 2]")
    p.create("aff_not_in", 'affinity(view.sku, 1d) not in ["a"]')
    p.set_traits("u", {"country": "TR"})
    p.ingest([ev("u", "view", B, sku=1.0)])
    assert p.ref.user_segments("u") == []
