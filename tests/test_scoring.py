"""scoring/: training on populations whose propensity is known by construction, ONNX export
and checks, the feature transform, default features, the spec and the registry."""

from __future__ import annotations

import logging
import pickle
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from engine.errors import ModelError, UnknownModel
from engine.expr import ast as A
from engine.expr import check, parse, walk
from scoring import (CurvePoint, Deployment, FeatureTransform, ModelRegistry, ModelReport, ModelRuntime,
                     ModelSpec, ModelVersion, default_features, threshold_for, train, user_model)
from scoring import _onnx, registry as registry_mod, training
from scoring._calibration import BetaCalibration
from scoring._metrics import auc, calibration_error, pr_curve
from scoring.spec import DAY_MS, best_precision

N_FEATURES = 10
FEATURES = [f"count(e{i}, 1d)" for i in range(N_FEATURES)]


# ----------------------------------------------------------------------------- populations


def linear_population(n: int, seed: int):
    """Propensity logistic in three features; the other columns are noise, some with the null
    (NaN) and +inf patterns real features have."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, N_FEATURES))
    logit = -1.6 + 1.2 * X[:, 0] - 0.8 * X[:, 1] + 0.5 * X[:, 2]
    X[rng.random(n) < 0.3, 5] = np.nan
    X[rng.random(n) < 0.2, 6] = np.inf
    X[:, 7] = np.abs(X[:, 7]) * 1e9  # a duration in ms
    p = 1.0 / (1.0 + np.exp(-logit))
    y = rng.random(n) < p
    hashes = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    return X, y, hashes, p


def interaction_population(n: int, seed: int):
    """Propensity with a step and an interaction that a linear model cannot express."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, N_FEATURES))
    logit = -2.0 + 2.0 * (X[:, 0] > 0.5) + 2.0 * ((X[:, 1] > 0) & (X[:, 2] > 0))
    p = 1.0 / (1.0 + np.exp(-logit))
    y = rng.random(n) < p
    return X, y, rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64), p


def spec(**kw) -> ModelSpec:
    base = dict(name="buyers", target="purchase", horizon_ms=7 * DAY_MS, lookback_ms=30 * DAY_MS)
    return ModelSpec(**{**base, **kw})


def scores(dep: Deployment, X: np.ndarray) -> np.ndarray:
    return ModelRuntime(dep.onnx, len(dep.features)).predict(FeatureTransform.from_dict(dep.transform).apply(X))


@pytest.fixture(scope="module")
def linear_auto():
    X, y, h, _ = linear_population(40_000, seed=1)
    phases = []
    dep, rep = train(X, y, h, spec(), version=1, features=FEATURES, now_ms=1_000, cutoff_ms=500,
                     progress=phases.append)
    return dep, rep, phases


@pytest.fixture(scope="module")
def fresh_linear():
    return linear_population(100_000, seed=99)


# ----------------------------------------------------------------------------- training


def test_auc_close_to_the_generators_own(linear_auto, fresh_linear):
    dep, rep, _ = linear_auto
    X, y, _, p = fresh_linear
    s = scores(dep, X)
    assert auc(y, s) >= auc(y, p) - 0.02
    assert set(rep.candidates) == {"logistic", "gbt"}
    assert rep.algorithm == max(rep.candidates, key=rep.candidates.get)
    assert abs(rep.auc - auc(y, p)) < 0.03


def test_probabilities_are_calibrated(linear_auto, fresh_linear):
    dep, rep, _ = linear_auto
    X, y, _, p = fresh_linear
    s = scores(dep, X)
    assert rep.calibration_error < 0.025
    assert calibration_error(y, s) < 0.015
    # The sum of probabilities is the forecast of converters.
    assert abs(s.sum() - p.sum()) / p.sum() < 0.03
    assert abs(rep.predicted_positives - rep.validation_positives) / rep.validation_positives < 0.1


def test_report_fields(linear_auto):
    dep, rep, phases = linear_auto
    assert phases == ["fit", "calibration", "export"]
    assert (rep.name, rep.version, rep.trained_ms, rep.cutoff_ms) == ("buyers", 1, 1_000, 500)
    assert rep.rows == 40_000 and 0 < rep.positives < rep.rows
    assert rep.base_rate == pytest.approx(rep.positives / rep.rows)
    assert 6_000 < rep.validation_rows < 10_000
    assert rep.features == tuple(FEATURES) == dep.features
    assert (rep.target, rep.horizon_ms, rep.lookback_ms) == ("purchase", 7 * DAY_MS, 30 * DAY_MS)
    assert ModelReport.from_dict(rep.to_dict()) == rep
    assert pickle.loads(pickle.dumps(dep)) == dep


def test_curve_sizes_and_thresholds(linear_auto):
    dep, rep, _ = linear_auto
    curve = rep.curve
    assert 100 <= len(curve) <= 220 and curve == dep.curve
    thresholds = [c.threshold for c in curve]
    assert thresholds == sorted(thresholds)
    assert [c.size for c in curve] == sorted((c.size for c in curve), reverse=True)
    assert curve[0].recall == 1.0 and curve[0].size == rep.validation_rows
    assert all(c.size >= 10 for c in curve)


def test_precision_levels_hold_on_fresh_users(linear_auto, fresh_linear):
    dep, _, _ = linear_auto
    X, y, _, _ = fresh_linear
    s = scores(dep, X)
    for level in (0.4, 0.6, 0.75):
        t = dep.threshold(level)
        chosen = s >= t
        assert chosen.sum() > 100
        assert y[chosen].mean() >= level - 0.03, level


def test_auto_picks_trees_when_the_propensity_is_not_linear():
    X, y, h, _ = interaction_population(30_000, seed=3)
    dep, rep = train(X, y, h, spec(), version=1, features=FEATURES, now_ms=0, cutoff_ms=0)
    Xf, yf, _, pf = interaction_population(60_000, seed=4)
    assert rep.algorithm == "gbt"
    assert rep.candidates["gbt"] > rep.candidates["logistic"] + 0.02
    assert auc(yf, scores(dep, Xf)) >= auc(yf, pf) - 0.02
    assert calibration_error(yf, scores(dep, Xf)) < 0.02


def test_large_population_uses_plain_splits_and_forecasts():
    # Beyond CROSS_FIT_MAX_USERS development users the calibration split is used as it is.
    X, y, h, _ = linear_population(140_000, seed=5)
    fitted = training.fit(X, y, h, spec(algorithm="logistic"))
    assert fitted.selection == "validation" and fitted.z_cal is None
    dep, rep = training.export(training.calibrate(fitted), name="m", version=3, features=FEATURES, now_ms=0,
                               cutoff_ms=0)
    Xf, yf, _, pf = linear_population(60_000, seed=6)
    s = scores(dep, Xf)
    assert auc(yf, s) >= auc(yf, pf) - 0.01
    assert abs(s.sum() - pf.sum()) / pf.sum() < 0.03


@pytest.mark.parametrize("algorithm", ["logistic", "gbt"])
def test_onnx_agrees_with_scikit_learn(algorithm):
    X, y, h, _ = linear_population(20_000, seed=7)
    X[:, 8] = np.round(X[:, 8] * 3)  # ties on split thresholds
    fitted = training.fit(X, y, h, spec(algorithm=algorithm))
    cal = training.calibrate(fitted)
    dep, _ = training.export(cal, name="m", version=1, features=FEATURES, now_ms=0, cutoff_ms=0)
    Xf = fitted.transform.apply(linear_population(20_000, seed=8)[0])
    onnx_p = ModelRuntime(dep.onnx, N_FEATURES).predict(Xf)
    np.testing.assert_allclose(onnx_p, cal.calibration.predict(fitted.model.margin(Xf)), atol=1e-5, rtol=0)
    # Without calibration the graph is the estimator itself: its predict_proba, to 1e-5.
    raw = ModelRuntime(_onnx.build(fitted.model, BetaCalibration(), N_FEATURES, {}), N_FEATURES).predict(Xf)
    est = fitted.model.model
    inputs = Xf.astype(np.float64)
    if algorithm == "logistic":
        inputs = (np.hstack([inputs, np.sign(inputs) * np.log1p(np.abs(inputs))]) - fitted.model.mu) \
            * fitted.model.inv_sd
    np.testing.assert_allclose(raw, est.predict_proba(inputs)[:, 1], atol=1e-5, rtol=0)


def test_export_refuses_a_disagreeing_graph(monkeypatch):
    X, y, h, _ = linear_population(3_000, seed=9)
    cal = training.calibrate(training.fit(X, y, h, spec(algorithm="logistic")))
    monkeypatch.setattr(training, "ONNX_TOLERANCE", 0.0)
    with pytest.raises(ModelError, match="disagrees with the fitted logistic model"):
        training.export(cal, name="m", version=1, features=FEATURES, now_ms=0, cutoff_ms=0)


def test_stages_are_picklable():
    X, y, h, _ = linear_population(2_000, seed=10)
    fitted = pickle.loads(pickle.dumps(training.fit(X, y, h, spec(algorithm="gbt"))))
    cal = pickle.loads(pickle.dumps(training.calibrate(fitted)))
    dep, rep = training.export(cal, name="m", version=1, features=FEATURES, now_ms=0, cutoff_ms=0)
    assert rep.algorithm == "gbt" and dep.onnx


def test_training_is_deterministic_and_seeded():
    X, y, h, _ = linear_population(3_000, seed=13)
    runs = [train(X, y, h, spec(seed=s), version=1, features=FEATURES, now_ms=0, cutoff_ms=0)[0] for s in (0, 0, 1)]
    assert runs[0].onnx == runs[1].onnx and runs[0].curve == runs[1].curve
    assert runs[0].curve != runs[2].curve  # another seed, another split


def test_too_little_data_is_refused_with_counts():
    X, y, h, _ = linear_population(400, seed=11)
    with pytest.raises(ModelError, match="too few users to train: 30"):
        train(X[:30], y[:30], h[:30], spec(), version=1, features=FEATURES, now_ms=0, cutoff_ms=0)
    with pytest.raises(ModelError, match="too few positives to train: 0 of 400"):
        train(X, np.zeros(400, bool), h, spec(), version=1, features=FEATURES, now_ms=0, cutoff_ms=0)
    with pytest.raises(ModelError, match="too few negatives"):
        train(X, np.ones(400, bool), h, spec(), version=1, features=FEATURES, now_ms=0, cutoff_ms=0)
    part, _ = training.split_by_user(h, 0)
    y_train_only = (part == 0) & (np.arange(400) % 2 == 0)
    with pytest.raises(ModelError, match="the calibration split .* has no positives"):
        train(X, y_train_only, h, spec(), version=1, features=FEATURES, now_ms=0, cutoff_ms=0)
    with pytest.raises(ModelError, match="features: 3 listed"):
        train(X, y, h, spec(), version=1, features=FEATURES[:3], now_ms=0, cutoff_ms=0)


def test_split_by_user_is_stable_and_proportioned():
    h = np.arange(200_000, dtype=np.uint64)  # sequential ids: the mixing must spread them
    part, fold = training.split_by_user(h, seed=0)
    shares = np.bincount(part, minlength=3) / len(h)
    np.testing.assert_allclose(shares, [0.6, 0.2, 0.2], atol=0.01)
    np.testing.assert_allclose(np.bincount(fold) / len(h), 0.2, atol=0.01)
    again, _ = training.split_by_user(h[::-1].copy(), seed=0)
    assert np.array_equal(again[::-1], part)
    assert not np.array_equal(training.split_by_user(h, seed=1)[0], part)


# ----------------------------------------------------------------------------- metrics


def test_auc_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300), 1)
    pos, neg = s[y], s[~y]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auc(y, s) == pytest.approx(pairs)


def test_pr_curve_and_threshold_for():
    s = np.repeat(np.linspace(1.0, 0.0, 100), 3)  # 100 distinct scores, three users each
    y = np.tile([True, False, True], 100) & (s > 0.4)
    curve = pr_curve(y, s)
    for c in curve:
        chosen = s >= c.threshold
        assert c.size == chosen.sum()
        assert c.precision == pytest.approx(y[chosen].mean())
        assert c.recall == pytest.approx(y[chosen].sum() / y.sum())
    assert threshold_for(curve, 0.6) == min(c.threshold for c in curve if c.precision >= 0.6)
    assert threshold_for(curve, 1.0) is None
    assert best_precision(curve) == pytest.approx(2 / 3)
    assert threshold_for((), 0.1) is None and best_precision(()) == 0.0


def test_calibration_error_definition():
    p = np.array([0.05, 0.05, 0.95, 0.95])
    y = np.array([False, False, True, False])
    assert calibration_error(y, p) == pytest.approx(0.5 * 0.05 + 0.5 * 0.45)


def test_deployment_threshold_messages():
    curve = (CurvePoint(0.2, 0.4, 1.0, 100), CurvePoint(0.5, 0.62, 0.5, 30))
    dep = Deployment("m", 1, b"", ("count(a, 1d)",), {"kind": "identity"}, curve)
    assert dep.threshold(0.6) == 0.5
    with pytest.raises(ModelError, match="best precision available is 0.62"):
        dep.threshold(0.8)
    user = Deployment("mine", 1, b"", ("count(a, 1d)",), {"kind": "identity"}, ())
    with pytest.raises(ModelError, match=r"model mine has no validation curve \(user-supplied\); use score\(\) "
                                         r"or bucket\(\)"):
        user.threshold(0.5)
    assert [dep.bucket(v) for v in (0.8, 0.75, 0.6, 0.1)] == ["high", "high", "medium", "low"]


# ----------------------------------------------------------------------------- user models


def _sklearn_onnx(n_features: int, *, zipmap: bool = False, double: bool = False) -> tuple[bytes, object, np.ndarray]:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, n_features))
    y = X[:, 0] + 0.5 * rng.standard_normal(500) > 0
    est = LogisticRegression().fit(X, y)
    sample = X[:1] if double else X[:1].astype(np.float32)
    model = to_onnx(est, sample, options={"zipmap": zipmap}, target_opset=17)
    return model.SerializeToString(), est, X


def _graph(inputs, outputs, nodes) -> bytes:
    g = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_user_model_accepted_and_scores_like_sklearn():
    blob, est, X = _sklearn_onnx(5)
    features = [f"count(e{i}, 7d)" for i in range(5)]
    dep, rep = user_model("mine", 2, blob, features, now_ms=123)
    assert (rep.algorithm, rep.version, rep.trained_ms, rep.curve) == ("onnx", 2, 123, ())
    assert rep.features == tuple(features) == dep.features
    assert dep.curve == () and FeatureTransform.from_dict(dep.transform).is_identity
    got = ModelRuntime(dep.onnx, 5).predict(X.astype(np.float32))
    np.testing.assert_allclose(got, est.predict_proba(X.astype(np.float32))[:, 1], atol=1e-5)


def test_user_model_outputs_n_and_n1_accepted():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    sigmoid = helper.make_node("Sigmoid", ["m"], ["p"])
    flat = _graph([x], [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None])],
                  [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=0), sigmoid])
    col = _graph([x], [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 1])],
                 [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1), sigmoid])
    X = np.array([[0, 0, 0], [3, 3, 3], [-3, -3, -3]], np.float32)
    for blob in (flat, col):
        user_model("m", 1, blob, ["count(a, 1d)", "count(b, 1d)", "count(c, 1d)"], now_ms=0)
        np.testing.assert_allclose(ModelRuntime(blob, 3).predict(X), 1 / (1 + np.exp(-X[:, 0])), atol=1e-6)


@pytest.mark.parametrize("case, message", [
    ("garbage", "not an ONNX model: "),
    ("empty", "not an ONNX model: the file is empty"),
    ("two_inputs", r"the model has 2 inputs; rtseg feeds one float32 input \[N, 5\]"),
    ("features", "input 'X' expects 4 features, the deployment lists 5"),
    ("zipmap", r"is a ZipMap \(sequence of maps\): export with zipmap=False"),
    ("double", r"input 'X' is tensor\(double\); rtseg feeds one float32 input \[N, 5\]"),
    ("three_columns", r"output 'p' has shape \[N, 3\]"),
    ("fixed_batch", "has a fixed batch size of 1"),
])
def test_bad_onnx_refused_naming_the_mismatch(case, message):
    f5 = [f"count(e{i}, 1d)" for i in range(5)]
    x5 = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 5])
    blob = {
        "garbage": lambda: b"\x08\x07 this is not a protobuf \xff\xff",
        "empty": lambda: b"",
        "two_inputs": lambda: _graph([x5, helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 5])],
                                     [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 5])],
                                     [helper.make_node("Add", ["x", "z"], ["p"])]),
        "features": lambda: _sklearn_onnx(4)[0],
        "zipmap": lambda: _sklearn_onnx(5, zipmap=True)[0],
        "double": lambda: _sklearn_onnx(5, double=True)[0],
        "three_columns": lambda: _graph([x5], [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 3])],
                                        [helper.make_node("Slice", ["x", "s", "e", "a"], ["p"])]),
        "fixed_batch": lambda: _graph([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
                                      [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 5])],
                                      [helper.make_node("Sigmoid", ["x"], ["p"])]),
    }[case]()
    if case == "three_columns":
        m = onnx.load_model_from_string(blob)
        for name, v in (("s", [0]), ("e", [3]), ("a", [1])):
            m.graph.initializer.append(onnx.numpy_helper.from_array(np.array(v, np.int64), name))
        blob = m.SerializeToString()
    with pytest.raises(ModelError, match=message):
        user_model("m", 1, blob, f5, now_ms=0)


def test_user_model_feature_checks():
    blob, _, _ = _sklearn_onnx(2)
    with pytest.raises(ModelError, match=r"features\[1\] 'count\(a, 1d\) > 2' is a condition"):
        user_model("m", 1, blob, ["count(a, 1d)", "count(a, 1d) > 2"], now_ms=0)
    with pytest.raises(ModelError, match=r"features\[0\]"):
        user_model("m", 1, blob, ["count(a,", "count(b, 1d)"], now_ms=0)
    with pytest.raises(ModelError, match="needs its feature expressions"):
        user_model("m", 1, blob, [], now_ms=0)


def test_runtime_batches_and_pickles():
    X, y, h, _ = linear_population(3_000, seed=12)
    dep, _ = train(X, y, h, spec(algorithm="gbt"), version=1, features=FEATURES, now_ms=0, cutoff_ms=0)
    rt = ModelRuntime(dep.onnx, N_FEATURES)
    Z = FeatureTransform.from_dict(dep.transform).apply(np.tile(X, (15, 1)))  # > BATCH_ROWS rows
    whole = rt.predict(Z)
    assert whole.dtype == np.float64 and whole.shape == (len(Z),)
    assert ((whole >= 0) & (whole <= 1)).all()
    # onnxruntime sums trees in another order for small batches: equal to float32 rounding.
    np.testing.assert_allclose(rt.predict(Z[:1000]), whole[:1000], atol=1e-6, rtol=0)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(rt)).predict(Z[:50]), whole[:50], atol=1e-6, rtol=0)
    assert rt.predict(Z[:0]).shape == (0,)
    with pytest.raises(ValueError, match="expected rows of 10 features"):
        rt.predict(Z[:, :3])


# ----------------------------------------------------------------------------- transform


def test_feature_transform_handles_nan_and_inf():
    X = np.array([
        [1.0, np.nan, np.inf, 5.0, np.nan, 8.64e9],
        [2.0, 3.0, 10.0, 5.0, np.nan, np.inf],
        [np.nan, 4.0, -np.inf, 5.0, np.nan, 1.0],
        [4.0, np.nan, 20.0, 5.0, np.nan, 2.0],
    ])
    t = FeatureTransform.fit(X)
    Z = t.apply(X)
    assert Z.dtype == np.float32 and Z.flags.c_contiguous and np.isfinite(Z).all()
    # Trees can tell -inf, null and +inf apart from every finite value.
    assert Z[2, 2] < Z[1, 2] < Z[3, 2] < Z[0, 2]
    assert Z[0, 1] == Z[3, 1] < Z[1, 1]
    assert Z[1, 5] > Z[0, 5] > Z[3, 5]
    assert len(set(Z[:, 4])) == 1  # all null: a constant
    # Serving values outside the training range stay at its edges.
    out = t.apply(np.array([[1e12, -1e12, 1e12, np.inf, 7.0, -np.inf]]))
    assert out[0, 0] == Z[:, 0].max() and out[0, 1] == Z[:, 1].min() and out[0, 2] == Z[0, 2]
    assert out[0, 3] == 5.0 and out[0, 5] == Z[:, 5].min()
    median = FeatureTransform.fit(X, missing="median").apply(X)
    assert median[0, 1] == median[3, 1] == 3.5
    assert FeatureTransform.from_dict(t.to_dict()) == t == pickle.loads(pickle.dumps(t))
    huge = FeatureTransform.fit(np.array([[1e300], [-1e300], [np.inf]])).apply(np.array([[1e300], [np.inf]]))
    assert np.isfinite(huge).all()


def test_identity_transform_keeps_values():
    t = FeatureTransform.identity()
    X = np.array([[np.nan, np.inf, -np.inf, 1.5]])
    Z = t.apply(X)
    assert Z.dtype == np.float32
    assert np.isnan(Z[0, 0]) and Z[0, 1] == np.inf and Z[0, 2] == -np.inf and Z[0, 3] == 1.5
    assert FeatureTransform.from_dict(t.to_dict()).is_identity
    with pytest.raises(ModelError, match="unknown feature transform"):
        FeatureTransform.from_dict({"kind": "zscore"})


# ----------------------------------------------------------------------------- default features

SCHEMA = {
    "types": {
        "purchase": {"events": 800, "props": ["product_id", "country"], "has_value": True},
        "view": {"events": 9000, "props": ["page"], "has_value": False},
        "Add to Cart": {"events": 2000, "props": [], "has_value": False},
        "login": {"events": 300, "props": [], "has_value": False},
        "rare": {"events": 2, "props": [], "has_value": False},
    },
    "traits": ["age", "signup_at", "lifetime value"],
}


def _windows(text: str) -> list[int]:
    return [n.window_ms for n in walk(parse(text)) if isinstance(n, A.Aggregate)]


@pytest.mark.parametrize("target, lookback_ms, horizon_ms", [
    ("purchase", 90 * DAY_MS, 7 * DAY_MS),
    ("purchase where value > 50", 23 * DAY_MS, 7 * DAY_MS),
    ('"Add to Cart"', 10 * DAY_MS, DAY_MS),
    ("purchase", 3 * DAY_MS, DAY_MS),
    ("view", 3_600_000, 60_000),
    ("", 30 * DAY_MS, 0),
])
def test_default_features_are_valid_numbers_within_the_lookback(target, lookback_ms, horizon_ms):
    features = default_features(target, SCHEMA, lookback_ms, horizon_ms)
    assert len(features) >= 15 and len(set(features)) == len(features)
    for text in features:
        assert check(parse(text), retention_ms=lookback_ms, condition=False) in ("number", "any"), text
        assert all(0 < w <= lookback_ms for w in _windows(text)), text


def test_default_features_cover_the_families():
    f = default_features("purchase", SCHEMA, 90 * DAY_MS, 7 * DAY_MS)
    text = "\n".join(f)
    for expected in ("since(purchase)", "count(purchase, 1d)", "count(purchase, 30d)", "count(purchase, 90d)",
                     "sum(purchase.value, 90d)", "avg(purchase.value, 90d)",
                     "(since_first(purchase) - since(purchase)) / (count(purchase, 90d) - 1)",
                     "count(purchase, 1w) - (count(purchase, 2w) - count(purchase, 1w))",
                     "active_days(purchase, 90d)", "distinct(purchase.product_id, 90d)", "since_first(purchase)",
                     "since(view)", 'count("Add to Cart", 90d)', "since(login)", "trait.age",
                     "since(trait.signup_at)", 'trait."lifetime value"'):
        assert expected in f, expected
    assert "rare" not in text  # only the three most frequent other types


def test_default_features_keep_the_target_filter_and_quotes():
    f = default_features("purchase where value > 50", SCHEMA, 30 * DAY_MS, 7 * DAY_MS)
    for text in f:
        for node in walk(parse(text)):
            if isinstance(node, A.EventSource) and node.event == "purchase":
                assert node.filter is not None, text
    assert "sum(purchase.value where value > 50, 30d)" in f
    g = default_features('"Add to Cart"', SCHEMA, 30 * DAY_MS, 7 * DAY_MS)
    assert g[0] == 'since("Add to Cart")'
    assert not any(t.startswith("sum(") for t in g)  # the type carries no values
    # Bare, as a client may send it, the name reads the same.
    assert default_features("Add to Cart", SCHEMA, 30 * DAY_MS, 7 * DAY_MS) == g


def test_default_features_need_some_event_type_for_a_lookalike():
    assert default_features("", SCHEMA, 30 * DAY_MS, 0)[0] == "since(view)"
    with pytest.raises(ModelError, match="no events yet"):
        default_features("", {"types": {}, "traits": []}, 30 * DAY_MS, 0)
    assert len(default_features("purchase", {}, 30 * DAY_MS, 7 * DAY_MS)) >= 15  # nothing known yet


# ----------------------------------------------------------------------------- spec


def test_spec_resolved_fills_the_lookback_and_canonicalises():
    s = ModelSpec(name="p7", target="purchase  where value>50", horizon_ms=7 * DAY_MS, algorithm="",
                  features=("count(purchase, 7d)",)).resolved(30 * DAY_MS)
    assert (s.target, s.lookback_ms, s.algorithm) == ("purchase where value > 50", 23 * DAY_MS, "auto")
    long = ModelSpec(name="p", target="purchase", horizon_ms=7 * DAY_MS).resolved(365 * DAY_MS)
    assert long.lookback_ms == 90 * DAY_MS
    assert ModelSpec(name="p", target="purchase", horizon_ms="7d").resolved(30 * DAY_MS).horizon_ms == 7 * DAY_MS
    look = ModelSpec(name="like vip", target_segment="vip").resolved(30 * DAY_MS)
    assert (look.horizon_ms, look.lookback_ms) == (0, 30 * DAY_MS)
    assert ModelSpec.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("fields, message", [
    (dict(name=""), "name is required"),
    (dict(name="x" * 201), "name is 201 characters long; at most 200"),
    (dict(name="a\nb"), "name .* contains control characters"),
    (dict(target_segment="vip"), "target / target_segment: give exactly one"),
    (dict(target=""), "target / target_segment: give exactly one"),
    (dict(target="purchase, 1d) + count(x"), "target .* is not an event source as in count"),
    (dict(horizon_ms=0), "horizon_ms must be positive with a target"),
    (dict(horizon_ms=-5), "horizon_ms cannot be negative"),
    (dict(algorithm="xgboost"), "algorithm must be one of auto, logistic, gbt"),
    (dict(bucket_medium=0.8), "bucket_medium / bucket_high: need 0 <= medium <= high <= 1"),
    (dict(bucket_high=1.5), "bucket_medium / bucket_high"),
    (dict(lookback_ms=30 * DAY_MS),
     "lookback_ms: retention 30d is shorter than lookback 30d \\+ horizon 1w: serve with --retention 37d or "
     "more, or shorten the lookback"),
    (dict(horizon_ms=30 * DAY_MS), "horizon_ms: the retention 30d is not longer than the horizon 30d"),
    (dict(features=("count(purchase, 7d) > 1",)), r"features\[0\] .* is a condition"),
    (dict(features=("count(purchase, 30d)",)), r"features\[0\] .* longer than the retention \(23d\)"),
    (dict(features=("since(a)", "since(a)")), r"features\[1\] repeats features\[0\]"),
    (dict(features=("score(\"m\") * 2",)), r"features\[0\] .* uses score\(\): a model's score cannot be a feature"),
    (dict(seed=-1), "seed must be 0 or more"),
])
def test_spec_validation_names_the_field(fields, message):
    with pytest.raises(ModelError, match=message):
        spec(**{"lookback_ms": 0, **fields}).resolved(30 * DAY_MS)


def test_spec_lookalike_fields():
    with pytest.raises(ModelError, match="takes no horizon"):
        ModelSpec(name="l", target_segment="vip", horizon_ms=DAY_MS).resolved(30 * DAY_MS)
    with pytest.raises(ModelError, match="churn applies to a target event"):
        ModelSpec(name="l", target_segment="vip", churn=True).resolved(30 * DAY_MS)
    with pytest.raises(ModelError, match="unknown model field"):
        ModelSpec.from_dict({"name": "x", "colour": "red"})


# ----------------------------------------------------------------------------- registry


def _version(name: str, version: int, *, user: bool = False) -> ModelVersion:
    curve = () if user else (CurvePoint(0.1, 0.3, 1.0, 500), CurvePoint(0.7, 0.8, 0.2, 40))
    features = ("count(purchase, 7d)", 'since("Add to Cart")')
    transform = FeatureTransform.identity() if user else FeatureTransform.fit(np.array([[1.0, np.inf], [2.0, 3.0]]))
    dep = Deployment(name, version, b"onnx-bytes-%d" % version, features, transform.to_dict(), curve, 0.8, 0.4)
    rep = ModelReport(name=name, version=version, auc=0.81234567891, base_rate=0.1, rows=1000, positives=100,
                      curve=curve, features=features, trained_ms=5, cutoff_ms=4,
                      algorithm="onnx" if user else "gbt", candidates={} if user else {"gbt": 0.8, "logistic": 0.7})
    s = None if user else ModelSpec(name=name, target="purchase", horizon_ms=DAY_MS, lookback_ms=DAY_MS,
                                    features=features)
    return ModelVersion(name, version, s, dep, rep)


NAMES = ["purchase_7d", "../../etc/passwd", "Churn 14d", "churn 14d", "名前/ünï", "x" * 200]


def test_registry_round_trip(tmp_path):
    reg = ModelRegistry(tmp_path)
    saved = {}
    for name in NAMES:
        for v in (1, 2):
            assert reg.next_version(name) == v
            mv = _version(name, v, user=(name == "Churn 14d"))
            reg.save(mv)
            saved[(name, v)] = mv
    dirs = [p for p in (tmp_path / "models").iterdir()]
    assert len(dirs) == len(NAMES)  # names that differ only in case still get their own
    assert all(len(p.name) <= 70 and "/" not in p.name and not p.name.startswith(".") for p in dirs)
    assert all(sorted(q.name for q in p.iterdir()) == ["v1", "v2"] for p in dirs)
    assert not list(tmp_path.parent.glob("etc"))

    again = ModelRegistry.load(tmp_path)
    assert again.names() == sorted(NAMES)
    for (name, v), mv in saved.items():
        assert again.get(name, v) == mv
        assert again.versions(name) == [1, 2]
    assert again.latest("purchase_7d") == saved[("purchase_7d", 2)] == again.get("purchase_7d")
    assert "purchase_7d" in again and "nope" not in again

    removed = again.delete("Churn 14d")
    assert removed.version == 2 and "Churn 14d" not in again
    kept = [p for p in (tmp_path / "models").iterdir() if not p.name.startswith(".")]
    assert len(kept) == len(NAMES) - 1            # the deleted one waits in models/.trash
    assert again.next_version("Churn 14d") == 3  # a re-created model never reuses a version
    reloaded = ModelRegistry.load(tmp_path)
    assert "Churn 14d" not in reloaded and reloaded.next_version("Churn 14d") == 3
    assert reloaded.version_for_replay("Churn 14d", 2) == removed
    assert reloaded.purge_trash(older_than=float("inf")) == 1
    assert "Churn 14d" not in ModelRegistry.load(tmp_path)._trash


def test_registry_errors_and_leftovers(tmp_path, caplog):
    reg = ModelRegistry(tmp_path)
    reg.save(_version("m", 1))
    with pytest.raises(ModelError, match="already has a version 1"):
        reg.save(_version("m", 1))
    with pytest.raises(UnknownModel, match="no model named 'zzz'"):
        reg.latest("zzz")
    with pytest.raises(UnknownModel, match="has no version 7"):
        reg.get("m", 7)
    with pytest.raises(UnknownModel):
        reg.delete("zzz")
    bad = _version("m", 2)
    with pytest.raises(ModelError, match="names disagree"):
        reg.save(ModelVersion("other", 2, bad.spec, bad.deployment, bad.report))
    reg.save(_version("m", 2))
    model_dir = next((tmp_path / "models").iterdir())
    (model_dir / ".tmp-v3-dead").mkdir()               # an interrupted write
    (model_dir / "v2" / "model.onnx").write_bytes(b"x")  # a damaged version
    with caplog.at_level(logging.WARNING, logger=registry_mod.__name__):
        again = ModelRegistry.load(tmp_path)
    assert again.versions("m") == [1] and "checksum" in caplog.text
    assert not (model_dir / ".tmp-v3-dead").exists()


def test_memory_registry():
    reg = ModelRegistry(None)
    reg.save(_version("m", 1))
    assert reg.latest("m").version == 1 and reg.names() == ["m"] and len(reg) == 1
    reg.delete("m")
    assert reg.names() == [] and reg.next_version("m") == 2


# ----------------------------------------------------------------------------- scale (slow)


@pytest.mark.slow
def test_train_a_million_users_within_a_minute():
    rng = np.random.default_rng(0)
    n, f = 1_000_000, 20
    X = rng.standard_normal((n, f))
    y = rng.random(n) < 1 / (1 + np.exp(-(-2 + X[:, 0] - 0.5 * X[:, 1] + 0.3 * X[:, 2] ** 2)))
    h = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    features = [f"count(e{i}, 1d)" for i in range(f)]
    t0 = time.perf_counter()
    dep, rep = train(X, y, h, spec(), version=1, features=features, now_ms=0, cutoff_ms=0)
    assert time.perf_counter() - t0 < 60
    Z = FeatureTransform.from_dict(dep.transform).apply(X)
    rt = ModelRuntime(dep.onnx, f)
    t0 = time.perf_counter()
    rt.predict(Z)
    assert n / (time.perf_counter() - t0) > 1_000_000
