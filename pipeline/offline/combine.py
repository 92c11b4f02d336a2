"""How predictions combine, as the pipeline's stages from TTA on and the bundle's predict.py both do it: TTA passes,
snapshots and folds averaged, members blended, the calibration applied, the submission's values. NumPy only; part of
predict.py (see pipeline/offline/images.py).
"""
from __future__ import annotations

import numpy as np

PLAIN, AUGMENTED = 0, 1
FLOOR = 1e-15  # a probability can be exactly 0; its log must stay finite
CALIBRATION_FLOOR = 1e-12


def from_log_probs(log_probs: np.ndarray) -> np.ndarray:
    """(n_aug + 1, N, C) log-probabilities of one model -> (2, N, C) probabilities: the plain pass, and the mean of
    the augmented passes (the plain pass again when there are none)."""
    probs = np.exp(log_probs)
    augmented = probs[1:].mean(axis=0) if len(probs) > 1 else probs[0]
    return np.stack([probs[0], augmented])


def tta_mean(passes: np.ndarray, n_aug: int) -> np.ndarray:
    """fastai 0.7's TTA prediction: the equal mean of the plain and the n_aug augmented passes, in float64 and
    renormalised (passes stored as float32 sum to 1 only to ~1e-7, which scikit-learn's log_loss warns about)."""
    mean = (passes[PLAIN].astype(np.float64) + n_aug * passes[AUGMENTED]) / (n_aug + 1)
    return mean / mean.sum(axis=-1, keepdims=True)


def average(predictions: list[np.ndarray], how: str = "arithmetic") -> np.ndarray:
    """Ensemble of probability arrays (folds or snapshots): their mean, or their geometric mean renormalised over
    the class axis (the last), which punishes a class any member finds unlikely."""
    stacked = np.stack(predictions)
    if how == "arithmetic":
        return stacked.mean(axis=0)
    if how != "geometric":
        raise ValueError(f"unknown average {how!r}")
    geometric = np.exp(np.log(np.clip(stacked, FLOOR, None)).mean(axis=0))
    return geometric / geometric.sum(axis=-1, keepdims=True)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def combine(member_probs: np.ndarray, weights, space: str) -> np.ndarray:
    """The blend of (M, N, C) probabilities with M weights: their weighted mean (`probs`), or the softmax of their
    weighted log-probabilities (`log_probs`, a weighted geometric mean renormalised over the classes)."""
    member_probs, weights = np.asarray(member_probs, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    if space == "probs":
        blended = np.tensordot(weights, member_probs, axes=1)
        return blended / blended.sum(axis=-1, keepdims=True)
    if space == "log_probs":
        return softmax(np.tensordot(weights, np.log(np.clip(member_probs, FLOOR, None)), axes=1))
    raise ValueError(f"unknown blend space {space!r}; expected probs or log_probs")


def stacker_features(member_probs: np.ndarray) -> np.ndarray:
    """(N, M * C): the members' log-probabilities side by side, what the stacker's logistic regression reads."""
    logs = np.log(np.clip(np.asarray(member_probs, dtype=np.float64), FLOOR, None))
    return logs.transpose(1, 0, 2).reshape(logs.shape[1], -1)


def stacked(member_probs: np.ndarray, stacker: dict, n_classes: int) -> np.ndarray:
    """scikit-learn's fitted LogisticRegression.predict_proba from its coefficients: softmax of the decision for
    several classes, the logistic of it for two; a class the fit never saw keeps probability 0."""
    decision = stacker_features(member_probs) @ np.asarray(stacker["coef"]).T + np.asarray(stacker["intercept"])
    if decision.shape[1] == 1:
        positive = 1 / (1 + np.exp(-decision[:, 0]))
        seen = np.stack([1 - positive, positive], axis=1)
    else:
        seen = softmax(decision)
    probs = np.zeros((len(decision), n_classes))
    probs[:, stacker["classes"]] = seen
    return probs


def calibrated(passes: np.ndarray, plain_weight: float, temperature: float) -> np.ndarray:
    """softmax(log(w * plain + (1 - w) * augmented) / T): the calibrate stage's fitted plain-pass weight and
    temperature applied to (2, N, C) passes."""
    passes = np.asarray(passes, dtype=np.float64)
    mixed = plain_weight * passes[PLAIN] + (1 - plain_weight) * passes[AUGMENTED]
    return softmax(np.log(np.clip(mixed, CALIBRATION_FLOOR, None)) / temperature)


def submission_values(probs: np.ndarray, classes: list[str], submission: dict) -> tuple[list[str], np.ndarray]:
    """(value columns, values) of the Kaggle CSV: one probability per class in `columns`' order, clipped to [clip,
    1 - clip] and renormalised; or, with a positive class (Dogs vs Cats), `label` = its probability, clipped."""
    clip = submission["clip"]
    if submission.get("positive_class") is not None:
        return ["label"], probs[:, [classes.index(submission["positive_class"])]].clip(clip, 1 - clip)
    columns = submission["columns"]
    values = np.asarray(probs, dtype=np.float64)[:, [classes.index(name) for name in columns]].clip(clip, 1 - clip)
    return columns, values / values.sum(axis=1, keepdims=True)
