"""Blending several members' predictions (a recipe's `members`, `blend`): how weights combine them, how they are
fitted on out-of-fold predictions, and the cross-fit that scores a blend on rows its fit never saw.

`member_probs` is always (M, N, C): M members' probabilities for the same N rows, classes in the same order. A
blender is fitted with `fit(member_probs, y)` and applied with `predict(member_probs)`: `WeightBlend` (non-negative
weights summing to one) or `Stacker` (a logistic regression on the members' log-probabilities).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression

# Applying a blend is the bundle's job too (pipeline.offline.combine): one implementation for both.
from pipeline.offline.combine import FLOOR, combine, stacked, stacker_features


def true_class_log_probs(member_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(M, N): each member's log-probability of each row's true class, what log loss averages."""
    picked = np.take_along_axis(np.asarray(member_probs, dtype=np.float64), y[None, :, None], axis=2)[..., 0]
    return np.log(np.clip(picked, FLOOR, None))


def fit_weights(member_probs: np.ndarray, y: np.ndarray, space: str) -> np.ndarray:
    """M non-negative weights summing to one that minimise the log loss of `combine(member_probs, weights, space)`.

    Both spaces' losses are convex in the weights (the log of a mixture; log-sum-exp of an affine map), so SLSQP from
    the uniform blend finds the optimum over the simplex, which is never worse than any one member (a vertex)."""
    member_probs, y = np.asarray(member_probs, dtype=np.float64), np.asarray(y)
    n_members = len(member_probs)

    def loss(weights: np.ndarray) -> float:
        # SLSQP may step a hair outside the bounds; a negative weight would make a probability negative.
        blended = combine(member_probs, np.clip(weights, 0, 1), space)
        return float(-true_class_log_probs(blended[None], y).mean())

    result = minimize(loss, np.full(n_members, 1 / n_members), method="SLSQP", bounds=[(0, 1)] * n_members,
                      constraints=[{"type": "eq", "fun": lambda weights: weights.sum() - 1}],
                      options={"ftol": 1e-12, "maxiter": 500})
    weights = np.clip(result.x, 0, None)
    return weights / weights.sum()


class WeightBlend:
    """`combine` with weights fitted by `fit_weights`."""

    def __init__(self, space: str):
        self.space, self.weights = space, None

    def fit(self, member_probs: np.ndarray, y: np.ndarray) -> WeightBlend:
        self.weights = fit_weights(member_probs, y, self.space)
        return self

    def predict(self, member_probs: np.ndarray) -> np.ndarray:
        return combine(member_probs, self.weights, self.space)


class Stacker:
    """A multinomial logistic regression on the members' log-probabilities side by side, (N, M * C) features."""

    def __init__(self, c: float, seed: int, n_classes: int):
        self.n_classes = n_classes
        self.model = LogisticRegression(C=c, max_iter=1000, random_state=seed)

    def fit(self, member_probs: np.ndarray, y: np.ndarray) -> Stacker:
        self.model.fit(stacker_features(member_probs), y)
        return self

    def coefficients(self) -> dict:
        """The fitted regression as plain data: what `offline_combine.stacked` applies, and the bundle carries."""
        return {"coef": self.model.coef_.tolist(), "intercept": self.model.intercept_.tolist(),
                "classes": self.model.classes_.tolist()}

    def predict(self, member_probs: np.ndarray) -> np.ndarray:
        # A class absent from a fold's training rows keeps probability 0 in its own column (offline_combine.stacked).
        return stacked(member_probs, self.coefficients(), self.n_classes)


def blender(params: dict, n_classes: int) -> WeightBlend | Stacker:
    """A fresh, unfitted blender for the recipe's `blend` slice (method, space, stacker_c) and its seed."""
    if params["method"] == "weights":
        return WeightBlend(params["space"])
    if params["method"] == "stacker":
        return Stacker(params["stacker_c"], params["seed"], n_classes)
    raise ValueError(f"unknown blend method {params['method']!r}; expected weights or stacker")


def fit_per_fold(member_probs: np.ndarray, y: np.ndarray, folds: np.ndarray, new_blender) -> dict:
    """{fold: a blender fitted on every row outside that fold}, from `new_blender()`."""
    return {fold: new_blender().fit(member_probs[:, folds != fold], y[folds != fold]) for fold in np.unique(folds)}


def held_out_predictions(per_fold: dict, member_probs: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """(N, C): each fold's rows blended by the blender fitted without them."""
    probs = np.empty(member_probs.shape[1:])
    for fold, fitted in per_fold.items():
        probs[folds == fold] = fitted.predict(member_probs[:, folds == fold])
    return probs


def cross_fitted(member_probs: np.ndarray, y: np.ndarray, folds: np.ndarray, new_blender) -> tuple[np.ndarray, dict]:
    """The out-of-sample blend, each fold scored with a blender fitted on the other folds, and those blenders: the
    honest OOF figure, as a single member's OOF predictions come from the fold model that never saw the row."""
    per_fold = fit_per_fold(member_probs, y, folds, new_blender)
    return held_out_predictions(per_fold, member_probs, folds), per_fold


def correlation(member_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(M, M) Pearson correlation of the members' true-class log-probabilities: how alike their mistakes are."""
    return np.atleast_2d(np.corrcoef(true_class_log_probs(member_probs, y)))
