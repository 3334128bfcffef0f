"""The two model families, as margins (log-odds before calibration) over model inputs.

``LinearMargin``: logistic regression on each feature and its signed logarithm, standardised.
Counts, sums and durations in ms span orders of magnitude; the logarithm makes "1 purchase
against 0" weigh like "10 against 5" would in log-odds, while the raw column keeps the
linear part. ``TreeMargin``: scikit-learn's HistGradientBoostingClassifier under a serving
budget (below). Both are fitted in float64 on float32 inputs, which is what the ONNX graph
receives, so that the exported model can agree with them to 1e-5.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

# Serving budget: onnxruntime walks a (tree, row) pair in 20-35 ns on one thread, so at most
# 40 trees of depth <= 5 keep a 20-feature model above 1M rows/s. A larger learning rate makes
# up for the few trees: on a synthetic 1M-user population this lost < 0.001 AUC against 100
# unconstrained trees of 31 leaves. Small populations (Online Retail: ~2,500 users at a cutoff)
# overfit such trees; slower, smaller trees gained ~0.01 cross-validated AUC there.
GBT_PARAMS = dict(learning_rate=0.25, max_iter=40, max_leaf_nodes=15, max_depth=5,
                  l2_regularization=1.0, early_stopping=True, validation_fraction=0.1,
                  n_iter_no_change=8, max_bins=255)
GBT_SMALL_ROWS = 50_000
GBT_SMALL_PARAMS = dict(GBT_PARAMS, learning_rate=0.1, max_leaf_nodes=7, max_depth=4)
# Training rows beyond these add little AUC and cost fit time linearly (< 60 s for 1M users).
GBT_MAX_ROWS = 400_000
LOGISTIC_MAX_ROWS = 300_000
LOGISTIC_C = 1.0


def signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


class LinearMargin:
    algorithm = "logistic"

    def __init__(self, mu, inv_sd, model: LogisticRegression):
        self.mu = mu
        self.inv_sd = inv_sd
        self.model = model

    @staticmethod
    def fit(X: np.ndarray, y: np.ndarray, seed: int) -> "LinearMargin":
        H = _expand(X)
        mu = H.mean(axis=0)
        sd = H.std(axis=0)
        inv_sd = np.where(sd > 1e-12 * np.maximum(1.0, np.abs(mu)), 1.0 / np.where(sd > 0, sd, 1.0), 0.0)
        Z = (H - mu) * inv_sd
        model = LogisticRegression(C=LOGISTIC_C, max_iter=1000, tol=1e-6, random_state=seed)
        with warnings.catch_warnings():
            # lbfgs stopping a little short of its tolerance still gives a usable model.
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(Z, y)
        return LinearMargin(mu, inv_sd, model)

    @property
    def coef(self) -> np.ndarray:
        return self.model.coef_.ravel().astype(np.float64)

    @property
    def intercept(self) -> float:
        return float(self.model.intercept_[0])

    def margin(self, X: np.ndarray) -> np.ndarray:
        return self.model.decision_function((_expand(X) - self.mu) * self.inv_sd)

    def describe(self) -> dict:
        return {"inputs": "x, signed_log(x), standardised", "C": LOGISTIC_C}


def _expand(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float64)
    return np.hstack([X, signed_log(X)])


class TreeMargin:
    algorithm = "gbt"

    def __init__(self, model: HistGradientBoostingClassifier):
        self.model = model

    @staticmethod
    def fit(X: np.ndarray, y: np.ndarray, seed: int) -> "TreeMargin":
        params = dict(GBT_PARAMS if len(X) > GBT_SMALL_ROWS else GBT_SMALL_PARAMS)
        params["min_samples_leaf"] = max(20, len(X) // 2000)
        if len(X) < 1000:  # too few rows to hold a tenth out for early stopping
            params["early_stopping"] = False
            params["max_iter"] = 20
        model = HistGradientBoostingClassifier(random_state=seed, **params)
        model.fit(np.asarray(X, np.float64), y)
        return TreeMargin(model)

    def margin(self, X: np.ndarray) -> np.ndarray:
        return self.model.decision_function(np.asarray(X, np.float64))

    def trees(self):
        """(nodes structured array, ...) per boosting iteration; binary models have one tree each."""
        return [predictors[0].nodes for predictors in self.model._predictors]

    @property
    def baseline(self) -> float:
        return float(np.ravel(self.model._baseline_prediction)[0])

    def describe(self) -> dict:
        p = self.model.get_params()
        return {"trees": int(self.model.n_iter_), **{k: p[k] for k in ("learning_rate", "max_depth", "max_leaf_nodes")}}
