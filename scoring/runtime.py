"""Scoring inside a shard: one onnxruntime session per deployed model, one thread each.

rtseg feeds a model one float32 input [N, F] (the F feature values of N users, after the
deployment's FeatureTransform) and reads the probability of the positive class from one
output: ``[N, 2]`` probabilities (column 1), ``[N, 1]`` or ``[N]``. ``check_onnx`` refuses
anything else with a message that names the mismatch; ``ModelRuntime`` runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx as onnxlib
import onnxruntime as ort

from engine.errors import ModelError

# Rows per onnxruntime call: tree ensembles run fastest while a batch stays in cache, and
# the bound keeps the working memory of a million-user rescore small.
BATCH_ROWS = 16_384
_FLOAT_TYPES = ("tensor(float)", "tensor(double)")
_PREFERRED_OUTPUTS = ("probabilities", "probability", "output_probability", "probs")


@dataclass(frozen=True)
class _Plan:
    input_name: str
    output_name: str
    column: int | None  # None: the output is [N] or [N, 1]


def check_onnx(onnx_bytes: bytes, n_features: int) -> None:
    """Raise ModelError unless rtseg can score ``n_features`` features with this model."""
    _plan(_session(onnx_bytes), n_features)


class ModelRuntime:
    """An onnxruntime session for one model version (picklable: it rebuilds from the bytes)."""

    def __init__(self, onnx: bytes, n_features: int):
        self._onnx = bytes(onnx)
        self.n_features = int(n_features)
        self._session = _session(self._onnx)
        self._plan = _plan(self._session, self.n_features)

    def predict(self, X32: np.ndarray) -> np.ndarray:
        """Probability of the positive class per row of ``X32`` [n, F], as float64 in [0, 1]
        (NaN stays NaN: a model that cannot score a row says so)."""
        X = np.asarray(X32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, found shape {X.shape}")
        n = len(X)
        out = np.empty(n, np.float64)
        if n == 0:
            return out
        X = np.ascontiguousarray(X, dtype=np.float32)
        plan = self._plan
        run = self._session.run
        names = [plan.output_name]
        for start in range(0, n, BATCH_ROWS):
            y = run(names, {plan.input_name: X[start:start + BATCH_ROWS]})[0]
            y = y[:, plan.column] if plan.column is not None else y.reshape(len(y), -1)[:, 0]
            out[start:start + len(y)] = y
        np.clip(out, 0.0, 1.0, out=out)
        return out

    def __reduce__(self):
        return (ModelRuntime, (self._onnx, self.n_features))


# ----------------------------------------------------------------------------- checks


def _session(onnx_bytes: bytes) -> ort.InferenceSession:
    if not isinstance(onnx_bytes, (bytes, bytearray, memoryview)) or len(onnx_bytes) == 0:
        raise ModelError("not an ONNX model: the file is empty")
    try:
        proto = onnxlib.load_model_from_string(bytes(onnx_bytes))
    except Exception as e:  # protobuf raises DecodeError and friends
        raise ModelError(f"not an ONNX model: {_first_line(e)}") from None
    if not proto.graph.node and not proto.graph.output:
        raise ModelError("not an ONNX model: no graph in the file")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(bytes(onnx_bytes), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelError(f"onnxruntime cannot load the model: {_first_line(e)}") from None


def _plan(session: ort.InferenceSession, n_features: int) -> _Plan:
    feeds = f"one float32 input [N, {n_features}]"
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"the model has {len(inputs)} inputs; rtseg feeds {feeds}")
    inp = inputs[0]
    if inp.type != "tensor(float)":
        raise ModelError(f"input '{inp.name}' is {inp.type}; rtseg feeds {feeds} "
                         "(convert with a FloatTensorType input)")
    shape = list(inp.shape or [])  # empty: rank unknown, left to the probe below
    if shape and len(shape) != 2:
        raise ModelError(f"input '{inp.name}' has shape {_shape_text(shape)}; rtseg feeds {feeds}")
    if shape and isinstance(shape[1], int) and shape[1] != n_features:
        raise ModelError(f"input '{inp.name}' expects {shape[1]} features, the deployment lists {n_features}")
    if shape and isinstance(shape[0], int) and shape[0] != -1:
        raise ModelError(f"input '{inp.name}' has a fixed batch size of {shape[0]}; rtseg scores users in "
                         "batches: export with a dynamic first dimension (None)")

    outputs = session.get_outputs()
    usable, refused = [], []
    for o in outputs:
        if o.type.startswith("seq(map") or o.type.startswith("map("):
            refused.append(f"output '{o.name}' is a ZipMap (sequence of maps): export with zipmap=False")
        elif o.type not in _FLOAT_TYPES:
            refused.append(f"output '{o.name}' is {o.type}, not float probabilities")
        else:
            usable.append(o)
    if not usable:
        refused.sort(key=lambda r: "ZipMap" not in r)
        reasons = "; ".join(refused) if refused else "the model has no outputs"
        raise ModelError(f"no usable probability output: {reasons}. rtseg reads the probability of the "
                         "positive class from [N, 2] probabilities, [N, 1] or [N]")
    preferred = [o for o in usable if o.name.lower() in _PREFERRED_OUTPUTS]
    out = (preferred or usable)[0]
    oshape = list(out.shape or [])
    # An empty shape may mean "unknown" as well as a scalar: leave that to the probe.
    if len(oshape) > 2 or (len(oshape) == 2 and isinstance(oshape[1], int) and oshape[1] not in (1, 2)):
        raise ModelError(f"output '{out.name}' has shape {_shape_text(oshape)}: rtseg reads the probability of "
                         "the positive class from [N, 2] probabilities, [N, 1] or [N]")

    # Symbolic shapes promise little: run a probe batch and look at what comes back.
    probe = np.zeros((2, n_features), np.float32)
    try:
        y = np.asarray(session.run([out.name], {inp.name: probe})[0])
    except Exception as e:
        raise ModelError(f"the model fails on a batch of {n_features} features: {_first_line(e)}") from None
    if y.ndim == 1 and y.shape == (2,):
        column = None
    elif y.ndim == 2 and y.shape[0] == 2 and y.shape[1] in (1, 2):
        column = 1 if y.shape[1] == 2 else None
    else:
        raise ModelError(f"output '{out.name}' gives shape {list(y.shape)} for 2 rows: rtseg reads the probability "
                         "of the positive class from [N, 2] probabilities, [N, 1] or [N]")
    return _Plan(inp.name, out.name, column)


def _shape_text(shape) -> str:
    return "[" + ", ".join("N" if not isinstance(d, int) else str(d) for d in shape) + "]"


def _first_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
