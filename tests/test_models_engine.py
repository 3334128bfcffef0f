"""Models inside the engine, checked against the reference evaluator (tests/reference.py).

* Feature values: random numeric expressions over random streams, computed by the shard's
  kernels (``feature_values``) and by the reference, at random moments.
* Point in time: the training rows at a cutoff (features, label, population) equal what the
  reference computes when it has seen only the events up to the cutoff.
* Score segments: a user-supplied ONNX model deployed in both; ``score()`` and ``bucket()``
  segments compared after every operation (ingest, traits, clock, re-score, new version),
  deltas included (MODEL_UPDATED on a new version).

The model here is a hand-built ONNX graph (``sigmoid(w . tanh(x * s) + b)``), so the tests
do not depend on training; tests/test_predictive.py covers trained models.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import Engine, ExpressionError, ModelError, ModelInUse, UnknownModel
from tests.reference import ReferenceEngine
from tests.strategies import DAY_MS, HOUR_MS, MINUTE_MS, RETENTIONS, USERS, ExprContext, feature_expr
from tests.test_differential import Ingest, Pair, _stream

B = 1_700_000_000_000
D = DAY_MS


# ----------------------------------------------------------------------------- a user model

def tanh_logistic_onnx(n_features: int, seed: int = 0, scale=None) -> tuple[bytes, callable]:
    """An ONNX model ``p = sigmoid(w . tanh(x * s) + b)`` (one float32 input [N, F], output
    "probabilities" [N, 1]) and the same function in numpy, for the reference."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1.5, (n_features, 1)).astype(np.float32)
    s = np.asarray(scale if scale is not None else rng.uniform(0.05, 1.0, n_features), np.float32)
    b = np.array([rng.normal(0, 0.5)], np.float32)
    nodes = [helper.make_node("Mul", ["x", "s"], ["xs"]), helper.make_node("Tanh", ["xs"], ["t"]),
             helper.make_node("MatMul", ["t", "w"], ["z0"]), helper.make_node("Add", ["z0", "b"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["probabilities"])]
    graph = helper.make_graph(
        nodes, "tanh_logistic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor("s", TensorProto.FLOAT, [n_features], s.tolist()),
         helper.make_tensor("w", TensorProto.FLOAT, [n_features, 1], w.ravel().tolist()),
         helper.make_tensor("b", TensorProto.FLOAT, [1], b.tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString()

    from scoring.runtime import ModelRuntime

    runtime = ModelRuntime(data, n_features)

    def predict(rows):
        return runtime.predict(feature_matrix(rows).astype(np.float32)).tolist()

    return data, predict


def feature_matrix(rows) -> np.ndarray:
    """Reference feature values -> the engine's convention: null NaN, true/false 1/0."""
    def num(v):
        if v is None or isinstance(v, str):
            return math.nan
        if isinstance(v, bool):
            return 1.0 if v else 0.0
        return float(v)

    return np.array([[num(v) for v in row] for row in rows], np.float64).reshape(len(rows), -1)


def numeric(text: str, retention_ms: int = 30 * DAY_MS):
    """A numeric expression's checked AST (the reference's ``evaluate`` takes an AST)."""
    from engine.expr import check, parse

    tree = parse(text)
    check(tree, retention_ms=retention_ms, condition=False)
    return tree


def same_value(a: float, b) -> bool:
    b = feature_matrix([[b]])[0, 0]
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


# ----------------------------------------------------------------------------- feature values

def _features(data, retention_ms: int, n: int) -> list[str]:
    ctx = ExprContext(retention_ms, ())
    return [feature_expr(data.draw, ctx, data.draw(st.sampled_from((0, 0, 1)), label="depth"))[0]
            for _ in range(n)]


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_feature_values_match_the_reference(data):
    retention, retention_ms = data.draw(st.sampled_from(RETENTIONS), label="retention")
    features = _features(data, retention_ms, data.draw(st.integers(1, 5), label="n_features"))
    grid = data.draw(st.sampled_from((MINUTE_MS, HOUR_MS)), label="grid")
    events = sorted(_stream(data.draw, data.draw(st.integers(1, 30), label="n"), grid, 100),
                    key=lambda e: e["timestamp_ms"])
    eng = Engine(clock="event", retention=retention, rescore_interval=0)
    ref = ReferenceEngine(clock="event", retention=retention)
    traits = {"signup_at": B + 5 * grid, "score_x": 2.5, "lat": 41.0, "country": "TR"}
    eng.set_traits(USERS[0], traits)
    ref.set_traits(USERS[0], traits)
    cut = data.draw(st.integers(0, len(events)), label="split")
    for part in (events[:cut], events[cut:]):
        if part:
            assert eng.ingest(part).accepted == ref.ingest(part).accepted
        later = data.draw(st.integers(0, 3 * D), label="advance")
        eng.advance_clock(eng.now_ms + later)
        ref.advance_clock(ref.now_ms + later)
        ids, values = eng._core.feature_values(features, eng.now_ms)
        assert sorted(ids) == ref.known_users()
        for i, uid in enumerate(ids):
            for j, f in enumerate(features):
                want = ref.evaluate(uid, numeric(f, retention_ms))
                assert same_value(values[i, j], want), f"{f} for {uid} at {eng.now_ms}: engine {values[i, j]}, reference {want!r}"


# ----------------------------------------------------------------------------- point in time

@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_training_rows_are_as_of_the_cutoff(data):
    """Features at the cutoff see only events up to it; the label is the target in
    (cutoff, now]; the population is the users seen by the cutoff."""
    from scoring.spec import ModelSpec

    features = _features(data, 30 * D, data.draw(st.integers(1, 4), label="n_features"))
    events = sorted(_stream(data.draw, data.draw(st.integers(2, 40), label="n"), HOUR_MS, 96),
                    key=lambda e: e["timestamp_ms"])
    horizon = data.draw(st.sampled_from((HOUR_MS, 6 * HOUR_MS, D)), label="horizon")
    churn = data.draw(st.booleans(), label="churn")
    target = data.draw(st.sampled_from(("buy", "view", "buy where price > 2")), label="target")
    eng = Engine(clock="event", retention="30d", rescore_interval=0)
    eng.ingest(events)
    now = eng.now_ms
    cutoff = now - horizon
    spec = ModelSpec(name="m", target=target, horizon_ms=horizon, churn=churn)
    got = eng._core.training_data(features, spec, cutoff, now)

    before = ReferenceEngine(clock="event", retention="30d")
    before.ingest([e for e in events if e["timestamp_ms"] <= cutoff])
    before.advance_clock(cutoff)
    full = ReferenceEngine(clock="event", retention="30d")
    full.ingest(events)
    population = sorted(before.known_users())
    assert sorted(got["user_ids"]) == population
    for i, uid in enumerate(got["user_ids"]):
        for j, f in enumerate(features):
            want = before.evaluate(uid, numeric(f))
            assert same_value(got["X"][i, j], want), f"{f} for {uid} at the cutoff: engine {got['X'][i, j]}, reference {want!r}"
        happened = full.evaluate(uid, f"count({target}, {horizon}ms) > 0")
        assert bool(got["y"][i]) == (happened != churn), uid


def test_an_event_after_the_cutoff_changes_no_feature():
    from scoring.spec import ModelSpec

    eng = Engine(clock="event", retention="30d", rescore_interval=0)
    eng.ingest([{"user_id": f"u{i}", "type": "buy", "timestamp_ms": B + i * HOUR_MS, "value": float(i),
                 "properties": {"sku": f"s{i % 3}"}} for i in range(20)])
    eng.advance_clock(B + 10 * D)
    features = ["since(buy)", "count(buy, 7d)", "sum(buy.value, 7d)", "distinct(buy.sku, 7d)",
                "active_days(buy, 7d)", "since_first(buy)"]
    spec = ModelSpec(name="m", target="buy", horizon_ms=3 * D)
    cutoff, now = B + 7 * D, B + 10 * D
    first = eng._core.training_data(features, spec, cutoff, now)
    # events after the cutoff, for users already there and for a new one
    eng.ingest([{"user_id": u, "type": "buy", "timestamp_ms": cutoff + k * HOUR_MS + 1, "value": 99.0,
                 "properties": {"sku": "new"}} for k, u in enumerate(["u1", "u5", "u19", "late"])])
    second = eng._core.training_data(features, spec, cutoff, now)
    assert first["user_ids"] == second["user_ids"] and "late" not in second["user_ids"]
    np.testing.assert_array_equal(first["X"], second["X"])
    assert not first["y"].any()
    assert second["y"].sum() == 3       # the label does see them


# ----------------------------------------------------------------------------- score segments

FEATURES = ["count(buy, 1d)", "sum(view.price, 2d)", "since(view) / 1h", "trait.score_x",
            "active_days(open, 3d)"]


class ModelPair(Pair):
    """Pair with model operations: ("deploy", seed) and ("rescore",)."""

    def __init__(self, engine_factory, **kw):
        super().__init__(engine_factory, **kw)

    def _call(self, target, op):
        if isinstance(op, tuple) and op[0] == "deploy":
            onnx, predict = tanh_logistic_onnx(len(FEATURES), seed=op[1])
            if isinstance(target, ReferenceEngine):
                return target.deploy_model("m", FEATURES, predict), None
            return target.deploy_model("m", onnx, FEATURES), None
        if isinstance(op, tuple) and op[0] == "rescore":
            return target.rescore(), None
        return super()._call(target, op)

    def apply(self, op):
        out = super().apply(op)
        for uid in sorted(self.ref.known_users()):
            got, want = self.eng.get_user(uid)["scores"], self.ref.scores(uid)
            assert set(got) == set(want), f"scores of {uid}: engine {got}, reference {want} after {op!r}"
            for k in want:
                assert got[k] == pytest.approx(want[k], abs=1e-6), f"score of {uid} after {op!r}"
        return out


def _engine_factory(clock="event", retention="30d", max_events_per_type=4096):
    return Engine(clock=clock, retention=retention, max_events_per_type=max_events_per_type, rescore_interval=0)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_score_segments_match_the_reference(data):
    pair = ModelPair(_engine_factory)
    events = sorted(_stream(data.draw, data.draw(st.integers(4, 40), label="n"), 15 * MINUTE_MS, 300),
                    key=lambda e: e["timestamp_ms"])
    pair.ingest(events[: len(events) // 3])
    pair.apply(("deploy", data.draw(st.integers(0, 5), label="seed")))
    cut = data.draw(st.sampled_from(("0.3", "0.5", "0.7")), label="cut")
    pair.create("scored", f'score("m") >= {cut}')
    pair.create("high", 'bucket("m") == "high" or bucket("m") == "low"')
    pair.create("unscored", 'not (score("m") >= 0)')
    pair.create("both", 'segment("scored") and count(buy, 1d) >= 1')
    rest = events[len(events) // 3:]
    i = 0
    while i < len(rest):
        k = data.draw(st.integers(1, 6), label="batch")
        pair.apply(Ingest(tuple(rest[i:i + k])))
        i += k
        step = data.draw(st.integers(0, 5), label="step")
        if step == 0:
            pair.advance(pair.ref.now_ms + data.draw(st.integers(1, 2 * D), label="advance"))
        elif step == 1:
            pair.apply(("rescore",))
        elif step == 2:
            pair.set_traits(data.draw(st.sampled_from(USERS[:4]), label="user"),
                            {"score_x": data.draw(st.sampled_from((0.0, 2.5, 9.0, None)), label="x")})
        elif step == 3:
            pair.apply(("deploy", data.draw(st.integers(0, 5), label="seed")))


def test_model_functions_name_what_is_missing():
    eng = Engine(clock="event", rescore_interval=0)
    with pytest.raises(ExpressionError) as err:
        eng.create_segment("s", 'count(a, 1d) > 0 and score("nope") > 0.5')
    assert str(err.value) == '1:22: unknown model "nope": train or deploy it first'
    onnx, _ = tanh_logistic_onnx(2)
    eng.deploy_model("m", onnx, ["count(a, 1d)", "count(b, 1d)"])
    with pytest.raises(ExpressionError) as err:
        eng.create_segment("s", 'likely("m", 0.8)')
    assert str(err.value).startswith("1:1: ") and "validation curve" in str(err.value)
    with pytest.raises(ModelError, match="features"):
        eng.deploy_model("m2", onnx, ["count(a, 1d)"])           # the model has 2 inputs
    with pytest.raises(ModelError, match=r"features\[1\]"):
        eng.deploy_model("m2", onnx, ["count(a, 1d)", 'trait.country == "TR" and "x"'])


def test_scores_in_user_views_and_model_lifecycle():
    eng = Engine(clock="event", rescore_interval=0)
    onnx, predict = tanh_logistic_onnx(2, seed=3)
    eng.ingest([{"user_id": "u1", "type": "a", "timestamp_ms": B}])
    report = eng.deploy_model("m", onnx, ["count(a, 1d)", "count(b, 1d)"])
    assert (report.name, report.version, report.algorithm) == ("m", 1, "onnx")
    view = eng.get_user("u1")
    assert view["traits"] == {} and view["scores"]["m"] == pytest.approx(predict([[1.0, 0.0]])[0], abs=1e-7)
    eng.create_segment("s", 'score("m") >= 0')
    assert eng.members("s") == {"u1"}
    with pytest.raises(ModelInUse):
        eng.delete_model("m")
    assert eng.deploy_model("m", onnx, ["count(a, 1d)", "count(b, 1d)"]).version == 2
    assert [r.version for r in eng.list_models()] == [2]
    eng.delete_segment("s")
    assert eng.delete_model("m").name == "m"
    with pytest.raises(UnknownModel):
        eng.get_model("m")
    assert eng.get_user("u1")["scores"] == {}


def test_score_moves_in_the_same_ingest_as_the_event():
    eng = Engine(clock="event", rescore_interval=0)
    onnx, _ = tanh_logistic_onnx(1, seed=1, scale=[1.0])
    eng.deploy_model("m", onnx, ["count(buy, 1d)"])
    p0 = eng.get_user("u1")["scores"]
    assert p0 == {}
    eng.ingest([{"user_id": "u1", "type": "view", "timestamp_ms": B}])
    assert eng.get_user("u1")["scores"] == {}            # no feature reads views: not scored
    eng.ingest([{"user_id": "u1", "type": "buy", "timestamp_ms": B + 1}])
    p1 = eng.get_user("u1")["scores"]["m"]
    eng.create_segment("s", f'score("m") > {p1}')
    seq = eng.last_sequence
    eng.ingest([{"user_id": "u1", "type": "buy", "timestamp_ms": B + 2}])
    p2 = eng.get_user("u1")["scores"]["m"]
    moved = [d for d in eng.deltas(seq)]
    if p2 > p1:
        assert [(d.segment, d.kind, d.cause) for d in moved] == [("s", "ENTER", "EVENT")]
    else:
        assert moved == []


def test_scheduled_rescore_follows_the_clock():
    eng = Engine(clock="event", rescore_interval="1h")
    onnx, _ = tanh_logistic_onnx(1, seed=2, scale=[1.0])
    eng.ingest([{"user_id": "u1", "type": "buy", "timestamp_ms": B}])
    eng.deploy_model("m", onnx, ["since(buy) / 1h"])
    before = eng.get_user("u1")["scores"]["m"]
    eng.advance_clock(B + 30 * MINUTE_MS)
    assert eng.get_user("u1")["scores"]["m"] == before      # not yet due
    eng.advance_clock(B + 2 * HOUR_MS)
    assert eng.get_user("u1")["scores"]["m"] != before      # re-scored with time


def test_scores_move_with_their_users_between_shards():
    from engine._shard import ShardCore

    eng = Engine(clock="event", rescore_interval=0)
    onnx, _ = tanh_logistic_onnx(1, seed=4, scale=[1.0])
    eng.deploy_model("m", onnx, ["count(buy, 1d)"])
    eng.ingest([{"user_id": f"u{i}", "type": "buy", "timestamp_ms": B + i} for i in range(50)])
    src = eng._core
    dst = ShardCore(src.retention_ms)
    dst.deploy_model(src.models["m"].deployment, eng.now_ms)
    slots = np.unique(src.row_slots(src._known_rows()))[:5]
    state = src.export_slots(slots)
    moved = state["user_ids"]
    assert dst.import_state(state) == len(moved) > 0
    for u in moved:
        assert dst.user_view(u)["scores"] == src.user_view(u)["scores"]


def test_the_parallel_value_kernel_agrees_with_the_serial_one(monkeypatch):
    """A re-score of everyone runs the feature kernel on every core; the batch path runs it
    on one. Both give the same values."""
    from engine import _shard_models

    rng = np.random.default_rng(7)
    n = 6000
    eng = Engine(clock="event", retention="30d", rescore_interval=0)
    eng.ingest_columns(user_id=np.array([f"u{i}" for i in rng.integers(0, 900, n)], object),
                       type=np.array(["buy", "view", "open"], object)[rng.integers(0, 3, n)],
                       timestamp_ms=np.sort(B + rng.integers(0, 20 * D, n)),
                       value=rng.integers(0, 40, n) * 0.25,
                       properties={"sku": np.array(["a", "b", "c", None], object)[rng.integers(0, 4, n)]})
    features = ["since(buy)", "count(view, 7d)", "avg(buy.value, 14d)", "distinct(view.sku, 7d)",
                "active_days(open, 14d)", "since_first(view) - since(view)", "count(buy, 3d) >= 2"]
    serial = eng._core.feature_values(features, eng.now_ms)
    monkeypatch.setattr(_shard_models, "PARALLEL_ROWS", 1)
    parallel = eng._core.feature_values(features, eng.now_ms)
    assert serial[0] == parallel[0]
    np.testing.assert_array_equal(serial[1], parallel[1])
    assert np.isnan(serial[1]).any() and np.isinf(serial[1]).any()   # null and +inf both met


def test_a_new_version_scored_in_slices_ends_where_one_pass_does():
    """A server scores a large population with a new version slice by slice (between rounds
    of ingestion): the scores, members and MODEL_UPDATED deltas add up to one pass's."""

    onnx1, _ = tanh_logistic_onnx(2, seed=5)
    onnx2, _ = tanh_logistic_onnx(2, seed=6)
    feats = ["count(buy, 1d)", "count(view, 1d)"]
    cores = []
    for _ in range(2):
        eng = Engine(clock="event", rescore_interval=0)
        eng.ingest([{"user_id": f"u{i}", "type": ("buy", "view")[i % 2], "timestamp_ms": B + i}
                    for i in range(300)])
        eng.deploy_model("m", onnx1, feats)
        eng.create_segment("s", 'score("m") >= 0.5')
        eng.create_segment("t", 'segment("s") and count(buy, 1d) >= 1')
        cores.append(eng)
    whole, sliced = cores
    whole.deploy_model("m", onnx2, feats)
    from engine.durability import frames as F

    mv = whole._models.registry.latest("m")
    sliced._models.add(mv)
    deploy = F.Frame(F.MODEL_DEPLOY, sliced.now_ms, ("m", mv.version, False))
    deploy.deployment = mv.deployment
    sliced._run(deploy)
    for k in range(3):
        sliced._run(F.Frame(F.MODEL_UPDATE, sliced.now_ms, ("m", (k, 3))))
    for name in ("s", "t"):
        assert sliced.members(name) == whole.members(name)
    key = lambda d: (d.segment, d.user_id, d.kind, d.cause)  # noqa: E731
    w = sorted(map(key, whole.deltas()))
    s = sorted(map(key, sliced.deltas()))
    assert s == w and any(d[3] == "MODEL_UPDATED" for d in w)
    for u in ("u0", "u1", "u150"):
        assert sliced.get_user(u)["scores"] == whole.get_user(u)["scores"]


def test_a_rescore_in_slices_ends_where_one_pass_does():
    from engine.durability import frames as F

    onnx, _ = tanh_logistic_onnx(1, seed=2, scale=[1.0])
    engines = []
    for _ in range(2):
        eng = Engine(clock="event", rescore_interval=0)
        eng.ingest([{"user_id": f"u{i}", "type": "buy", "timestamp_ms": B + i * MINUTE_MS} for i in range(200)])
        eng.deploy_model("m", onnx, ["since(buy) / 1h"])
        middle = eng.get_user("u100")["scores"]["m"]     # half the users on each side
        eng.create_segment("s", f'score("m") >= {middle!r}')
        eng.advance_clock(B + 5 * HOUR_MS)
        engines.append(eng)
    whole, sliced = engines
    whole.rescore()
    for k in range(4):
        sliced._run(F.Frame(F.RESCORE, sliced.now_ms, (k, 4)))
    assert sliced.members("s") == whole.members("s")
    key = lambda d: (d.segment, d.user_id, d.kind, d.cause)  # noqa: E731
    assert sorted(map(key, sliced.deltas())) == sorted(map(key, whole.deltas()))
    assert any(d.cause == "TIME" for d in whole.deltas())
