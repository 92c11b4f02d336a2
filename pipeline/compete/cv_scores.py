"""Out-of-fold scores as `cv_metrics.json` holds them: one model's folds (the oof stage) or a blend's (the blend
stage), in the same keys, so calibrate, the report and the benchmarks read either alike."""
from __future__ import annotations

import numpy as np


def scores(y: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """Log loss (over every class, present or not) and accuracy."""
    from sklearn.metrics import accuracy_score, log_loss  # kept out of the start-up of the stages importing this

    return float(log_loss(y, probs, labels=range(probs.shape[1]))), float(accuracy_score(y, probs.argmax(1)))


def cv_metrics(y: np.ndarray, probs: np.ndarray, plain: np.ndarray, folds: list[dict], n_aug: int, average: str,
               classes: list[str]) -> dict:
    """The out-of-fold figures with TTA as configured (`probs`) and without (`plain`), each fold's own (`folds`:
    fold, n_valid, valid_logloss, valid_accuracy and their no-TTA twins), and the folds' mean and spread."""
    (oof_logloss, oof_accuracy), (no_tta_logloss, no_tta_accuracy) = scores(y, probs), scores(y, plain)
    spread = {f"fold_{key}_{stat}": float(getattr(np, stat)([fold[key] for fold in folds]))
              for key in ("valid_logloss", "valid_accuracy") for stat in ("mean", "std")}
    return {"oof_logloss": oof_logloss, "oof_accuracy": oof_accuracy, "oof_logloss_no_tta": no_tta_logloss,
            "oof_accuracy_no_tta": no_tta_accuracy, "n_oof": len(y), "n_folds": len(folds), "folds": folds,
            **spread, "n_aug": n_aug, "ensemble_average": average, "classes": classes}
