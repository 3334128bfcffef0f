"""Beta calibration of a model's margin (Kull, Silva Filho and Flach, 2017).

With ``s = sigmoid(z)`` the raw probability of margin ``z``, the calibrated probability is

    p = sigmoid(a * ln(s) - b * ln(1 - s) + c),  a, b >= 0

that is ``sigmoid(c + b * softplus(z) - a * softplus(-z))``. ``a == b`` is Platt scaling of
``z``; ``a != b`` also corrects the asymmetric distortions boosted trees show, with three
parameters instead of isotonic regression's hundreds of steps. It is monotone (AUC is kept),
smooth (the ONNX graph agrees with it to float32 rounding, where isotonic steps would amplify
rounding at every jump) and, being a logistic regression with an intercept fitted by maximum
likelihood, its probabilities sum to the positives of the calibration split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize


@dataclass(frozen=True)
class BetaCalibration:
    a: float = 1.0
    b: float = 1.0
    c: float = 0.0

    @staticmethod
    def fit(z: np.ndarray, y: np.ndarray) -> "BetaCalibration":
        z = np.asarray(z, np.float64)
        y = np.asarray(y, np.float64)
        u = _basis(z)

        def loss(theta):
            t = u @ theta
            # log(1 + e^t) - y t, and its gradient (sigmoid(t) - y) u.
            value = np.mean(np.logaddexp(0.0, t) - y * t)
            grad = u.T @ (_sigmoid(t) - y) / len(t)
            return value, grad

        start = np.array([1.0, 1.0, 0.0])
        res = minimize(loss, start, jac=True, method="L-BFGS-B",
                       bounds=[(0.0, None), (0.0, None), (None, None)],
                       options={"maxiter": 500, "gtol": 1e-9, "ftol": 1e-13})
        a, b, c = (float(v) for v in res.x)
        return BetaCalibration(a, b, c)

    def predict(self, z: np.ndarray) -> np.ndarray:
        return _sigmoid(_basis(np.asarray(z, np.float64)) @ np.array([self.a, self.b, self.c]))

    def to_dict(self) -> dict:
        return {"method": "beta", "a": self.a, "b": self.b, "c": self.c}


def _basis(z: np.ndarray) -> np.ndarray:
    return np.column_stack([-np.logaddexp(0.0, -z), np.logaddexp(0.0, z), np.ones_like(z)])


def _sigmoid(t: np.ndarray) -> np.ndarray:
    out = np.empty_like(t)
    pos = t >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-t[pos]))
    e = np.exp(t[~pos])
    out[~pos] = e / (1.0 + e)
    return out
