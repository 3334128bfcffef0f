"""ONNX graphs for rtseg's own models: one float32 input ``x`` [N, F] (FeatureTransform
output), one output ``probabilities`` [N, 2] (columns: negative, positive class), no ZipMap.

The graph is margin -> beta calibration -> probabilities, written with onnx.helper in the
standard ``ai.onnx`` (opset 17) and ``ai.onnx.ml`` (opset 3) domains. skl2onnx 1.20 cannot
convert HistGradientBoostingClassifier from scikit-learn 1.9 (it emits a Python bool among
the integer ``nodes_missing_value_tracks_true``, which onnx rejects), so the tree ensemble is
emitted here directly from the fitted predictors; the linear model and the calibration are a
handful of operators. ``training.export`` checks every graph against the fitted model.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from scoring._calibration import BetaCalibration
from scoring._estimators import LinearMargin, TreeMargin

INPUT = "x"
OUTPUT = "probabilities"
OPSETS = (("", 17), ("ai.onnx.ml", 3))
IR_VERSION = 8  # with opset 17: onnx and onnxruntime 1.12 onwards, well inside the pins


def build(model, calibration: BetaCalibration, n_features: int, metadata: dict) -> bytes:
    nodes: list = []
    inits: list = []
    if isinstance(model, LinearMargin):
        _linear(model, n_features, nodes, inits)
    elif isinstance(model, TreeMargin):
        _trees(model, nodes)
    else:  # pragma: no cover - guarded by the callers
        raise TypeError(f"cannot export {type(model).__name__}")
    _calibrated_probabilities(calibration, nodes, inits)
    graph = helper.make_graph(
        nodes, "rtseg_propensity",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 2])],
        initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSETS],
                          producer_name="rtseg.scoring", ir_version=IR_VERSION)
    for key, value in metadata.items():
        entry = m.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(m)
    return m.SerializeToString()


def _const(name: str, array, inits: list) -> str:
    inits.append(numpy_helper.from_array(np.asarray(array), name))
    return name


def _linear(model: LinearMargin, n_features: int, nodes: list, inits: list) -> None:
    f32 = np.float32
    one = _const("one", np.array(1.0, f32), inits)
    nodes += [
        helper.make_node("Abs", [INPUT], ["abs_x"]),
        helper.make_node("Add", ["abs_x", one], ["abs_x1"]),
        helper.make_node("Log", ["abs_x1"], ["log_abs"]),
        helper.make_node("Sign", [INPUT], ["sign_x"]),
        helper.make_node("Mul", ["sign_x", "log_abs"], ["slog_x"]),
        helper.make_node("Concat", [INPUT, "slog_x"], ["h"], axis=1),
        helper.make_node("Sub", ["h", _const("mu", model.mu.astype(f32), inits)], ["h_c"]),
        helper.make_node("Mul", ["h_c", _const("inv_sd", model.inv_sd.astype(f32), inits)], ["h_z"]),
        helper.make_node("MatMul", ["h_z", _const("coef", model.coef.astype(f32).reshape(-1, 1), inits)], ["dot"]),
        helper.make_node("Add", ["dot", _const("intercept", np.array([model.intercept], f32), inits)], ["margin"]),
    ]


def _f32_at_most(t: np.ndarray) -> np.ndarray:
    """The largest float32 <= t: for a float32 input x, ``x <= t`` and ``x <= result`` agree,
    where rounding t to the nearest float32 could send x == result the other way."""
    f = np.asarray(t, np.float64).astype(np.float32)
    up = f.astype(np.float64) > t
    f[up] = np.nextafter(f[up], np.float32(-np.inf))
    return f


def _trees(model: TreeMargin, nodes: list) -> None:
    cols = {k: [] for k in ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes",
                            "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true",
                            "target_treeids", "target_nodeids", "target_ids", "target_weights")}
    for tree_id, nd in enumerate(model.trees()):
        n = len(nd)
        leaf = nd["is_leaf"].astype(bool)
        if nd["is_categorical"].astype(bool).any():  # pragma: no cover - inputs are numeric
            raise ValueError("categorical splits cannot be exported")
        cols["nodes_treeids"] += [tree_id] * n
        cols["nodes_nodeids"] += list(range(n))
        cols["nodes_featureids"] += np.where(leaf, 0, nd["feature_idx"]).astype(np.int64).tolist()
        cols["nodes_values"] += np.where(leaf, np.float32(0), _f32_at_most(nd["num_threshold"])).tolist()
        cols["nodes_modes"] += ["LEAF" if is_leaf else "BRANCH_LEQ" for is_leaf in leaf]
        cols["nodes_truenodeids"] += np.where(leaf, 0, nd["left"]).astype(np.int64).tolist()
        cols["nodes_falsenodeids"] += np.where(leaf, 0, nd["right"]).astype(np.int64).tolist()
        # Inputs are finite (FeatureTransform), so the NaN direction never matters.
        cols["nodes_missing_value_tracks_true"] += [0] * n
        leaves = np.flatnonzero(leaf)
        cols["target_treeids"] += [tree_id] * len(leaves)
        cols["target_nodeids"] += leaves.tolist()
        cols["target_ids"] += [0] * len(leaves)
        cols["target_weights"] += nd["value"][leaves].astype(np.float32).tolist()
    nodes.append(helper.make_node(
        "TreeEnsembleRegressor", [INPUT], ["margin"], domain="ai.onnx.ml", n_targets=1,
        aggregate_function="SUM", post_transform="NONE", base_values=[model.baseline], **cols))


def _calibrated_probabilities(cal: BetaCalibration, nodes: list, inits: list) -> None:
    f32 = np.float32
    nodes += [
        helper.make_node("Softplus", ["margin"], ["sp_pos"]),
        helper.make_node("Neg", ["margin"], ["neg_margin"]),
        helper.make_node("Softplus", ["neg_margin"], ["sp_neg"]),
        helper.make_node("Mul", ["sp_pos", _const("cal_b", np.array(cal.b, f32), inits)], ["b_term"]),
        helper.make_node("Mul", ["sp_neg", _const("cal_a", np.array(cal.a, f32), inits)], ["a_term"]),
        helper.make_node("Sub", ["b_term", "a_term"], ["ab"]),
        helper.make_node("Add", ["ab", _const("cal_c", np.array(cal.c, f32), inits)], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p1"]),
        helper.make_node("Sub", [_const("one_p", np.array(1.0, f32), inits), "p1"], ["p0"]),
        helper.make_node("Concat", ["p0", "p1"], [OUTPUT], axis=1),
    ]
