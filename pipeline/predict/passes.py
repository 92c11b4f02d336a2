"""TTA passes as the later stages see them: (2, N, C) probabilities, index 0 the plain pass, index 1 the mean of
the augmented passes (the plain pass again when there are none). Kept apart from fastai's equal mean over all
n_aug + 1 passes so that the calibrate stage can weigh the two; torch-free, so the stages that only combine
predictions start fast."""
from __future__ import annotations

import numpy as np

# Combining passes is the bundle's job too (pipeline.offline.combine): one implementation for both.
from pipeline.offline.combine import AUGMENTED, PLAIN, average, from_log_probs, tta_mean  # noqa: F401


def plain(passes: np.ndarray) -> np.ndarray:
    """The plain pass in float64, as every stage scores it: scikit-learn's log_loss clips at its input dtype's eps, so
    a float32 pass would cap a confidently wrong row at 15.9 nats (float64: 36) and report another log loss than the
    calibrate stage, which works in float64, reports for the same pass. Renormalised as tta_mean is: a float32 row
    sums to 1 only to ~1e-7, and log_loss warns (`y_prob values do not sum to one`) beyond 1.5e-8 in float64."""
    probs = passes[PLAIN].astype(np.float64)
    return probs / probs.sum(axis=-1, keepdims=True)
