"""Predictive segments: features, point-in-time training, ONNX export, scoring and the model
registry. The engine calls this package; the kernels know nothing of it.

- ``ModelSpec`` (what to train), ``ModelReport`` / ``CurvePoint`` (what training found),
  ``Deployment`` (what a shard needs to score a model version);
- ``default_features`` and ``FeatureTransform`` (features are segment-language expressions;
  the transform turns their raw values into model inputs);
- ``train`` (fit, calibrate, export; also ``scoring.training.fit/calibrate/export`` one by
  one) and ``user_model`` (a user's own ONNX model);
- ``ModelRuntime`` (one onnxruntime session per model per shard);
- ``ModelRegistry`` / ``ModelVersion`` (versions in memory and under the data dir);
- ``threshold_for`` (the score threshold of a precision level).
"""

from scoring.features import FeatureTransform, default_features
from scoring.registry import ModelRegistry, ModelVersion
from scoring.runtime import ModelRuntime
from scoring.spec import CurvePoint, Deployment, ModelReport, ModelSpec, threshold_for
from scoring.training import train, user_model

__all__ = [
    "CurvePoint",
    "Deployment",
    "FeatureTransform",
    "ModelRegistry",
    "ModelReport",
    "ModelRuntime",
    "ModelSpec",
    "ModelVersion",
    "default_features",
    "threshold_for",
    "train",
    "user_model",
]
