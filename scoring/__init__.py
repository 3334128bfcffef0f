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

import importlib

# Names -> the module that defines them. Imported on first use: scoring.spec alone (what a
# client needs) must not pay for scikit-learn and onnxruntime.
_HOME = {
    "CurvePoint": "spec", "Deployment": "spec", "ModelReport": "spec", "ModelSpec": "spec",
    "threshold_for": "spec", "FeatureTransform": "features", "default_features": "features",
    "ModelRegistry": "registry", "ModelVersion": "registry", "ModelRuntime": "runtime",
    "train": "training", "user_model": "training",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'scoring' has no attribute {name!r}")
    return getattr(importlib.import_module(f"scoring.{home}"), name)
