"""TTA passes as the later stages see them: (2, N, C) probabilities, index 0 the plain pass, index 1 the mean of
the augmented passes (the plain pass again when there are none). Kept apart from fastai's equal mean over all
n_aug + 1 passes so that the calibrate stage can weigh the two; torch-free, so the stages that only combine
predictions start fast."""
from __future__ import annotations

import numpy as np

PLAIN, AUGMENTED = 0, 1


def from_log_probs(log_probs: np.ndarray) -> np.ndarray:
    """(n_aug + 1, N, C) log-probabilities of one model -> (2, N, C) probabilities."""
    probs = np.exp(log_probs)
    augmented = probs[1:].mean(axis=0) if len(probs) > 1 else probs[0]
    return np.stack([probs[0], augmented])


def plain(passes: np.ndarray) -> np.ndarray:
    """The plain pass in float64, as every stage scores it: scikit-learn's log_loss clips at its input dtype's eps, so
    a float32 pass would cap a confidently wrong row at 15.9 nats (float64: 36) and report another log loss than the
    calibrate stage, which works in float64, reports for the same pass."""
    return passes[PLAIN].astype(np.float64)


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
    geometric = np.exp(np.log(np.clip(stacked, 1e-15, None)).mean(axis=0))
    return geometric / geometric.sum(axis=-1, keepdims=True)
