"""Pseudo-labels (the recipe's `pseudo`): fold k's student split, fold k's training images plus the test images fold
k's teacher labels confidently.

Honest out-of-fold scores rest on two facts held here. Fold k's teacher is made only of fold k's models: each teacher
member's fold-k test probabilities and, for the blend, the weights fitted without fold k's rows; none of them saw
fold k's validation images, so neither does the student through its pseudo-labels. And a pseudo row is a training row
only (is_valid False, fold -1): it never enters a validation set, the OOF file or the calibration fit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.dataset import DataError, class_indices, soft_columns
from pipeline.offline.combine import combine  # not through compete.blending: its scipy and scikit-learn

BLEND = "blend"  # the teacher that is the members' blend; any other teacher is one member's name
PSEUDO_FOLD = -1  # in no fold: no fold's validation set can ever take a pseudo row
SPLIT_COLUMNS = ["id", "label", "is_valid", "path", "fold"]  # a fold's split.csv (pipeline.stages.fold_split)


def check_fold_split(fold_split: pd.DataFrame, where: Path | str) -> None:
    """The teacher's round starts from a fold's own split, not from a student's (that would pseudo-label twice)."""
    missing = [column for column in SPLIT_COLUMNS if column not in fold_split]
    if missing:
        raise DataError(f"{where}: not a fold's split.csv, it has no {', '.join(missing)} column")
    if "pseudo" in fold_split:
        raise DataError(f"{where}: already a student's split (it has a `pseudo` column); give the fold's own split.csv")


def fold_blend_weights(weights: dict, fold: int, where: str) -> tuple[np.ndarray, str]:
    """Fold k's blend weights and space from the blend stage's weights.json: the weights fitted without fold k's rows,
    never the weights fitted on every fold."""
    fold_weights = weights.get("fold_weights") or {}
    if str(fold) not in fold_weights:
        raise DataError(f"{where}: no fold_weights for fold {fold} (it has folds {sorted(fold_weights)})")
    return np.asarray(fold_weights[str(fold)], dtype=np.float64), weights["space"]


def load_teacher_probs(paths: list[str], n_test: int, n_classes: int) -> np.ndarray:
    """(M, T, C): each teacher member's fold-k TTA test probabilities, in test.csv's row order."""
    arrays = [np.load(path) for path in paths]
    for path, probs in zip(paths, arrays):
        if probs.shape != (n_test, n_classes):
            raise DataError(f"{path}: teacher probabilities of shape {probs.shape}; test.csv and the split need "
                            f"({n_test}, {n_classes})")
    return np.stack(arrays)


def teacher_probs(member_probs: np.ndarray, paths: list[str], weights: np.ndarray | None,
                  space: str | None) -> np.ndarray:
    """(T, C): the members' blend with fold k's weights, or (no weights) the one teacher member's probabilities."""
    if weights is None:
        if len(member_probs) != 1:
            raise DataError(f"a member teacher takes one file of probabilities, got {len(paths)}: {' '.join(paths)}")
        return member_probs[0].astype(np.float64)
    if len(weights) != len(member_probs):
        raise DataError(f"{len(weights)} blend weights for {len(paths)} teacher files (one per member, in the "
                        f"weights' order): {' '.join(paths)}")
    return combine(member_probs, weights, space)


def refuse_colliding_ids(labelled: pd.DataFrame, test: pd.DataFrame, where: str) -> None:
    """A test id equal to a labelled id would make two rows of one id in the student's split, which every id-keyed
    table downstream (OOF rows, predictions) takes for one image."""
    shared = sorted(set(labelled["id"]) & set(test["id"]))
    if shared:
        raise DataError(f"{where}: test ids also labelled, so a pseudo row could not be told from a labelled one: "
                        f"{', '.join(shared[:10])}" + (f", ... ({len(shared) - 10} more)" if len(shared) > 10 else ""))


def confident(probs: np.ndarray, usable: np.ndarray, threshold: float) -> np.ndarray:
    """The test rows a student learns: readable images whose top teacher probability reaches the threshold."""
    return usable & (probs.max(axis=1) >= threshold)


def student_split(fold_split: pd.DataFrame, test: pd.DataFrame, probs: np.ndarray, classes: list[str], mode: str,
                  threshold: float) -> tuple[pd.DataFrame, np.ndarray]:
    """(fold k's rows unchanged then one training row per confident test image, the mask of those test rows). In
    soft mode, soft_<i> columns hold the targets: one-hot for labelled rows, the teacher's probabilities for pseudo."""
    used = confident(probs, test["usable"].to_numpy(dtype=bool), threshold)
    pseudo = pd.DataFrame({"id": test.loc[used, "id"].to_numpy(),
                           "label": np.asarray(classes, dtype=object)[probs[used].argmax(axis=1)],
                           "is_valid": False, "path": test.loc[used, "path"].to_numpy(), "fold": PSEUDO_FOLD,
                           "pseudo": True})
    real = fold_split[SPLIT_COLUMNS].assign(pseudo=False)
    if mode == "soft":
        one_hot = np.eye(len(classes))[class_indices(real["label"], classes).to_numpy()]
        real = pd.concat([real, pd.DataFrame(one_hot, columns=soft_columns(len(classes)))], axis=1)
        pseudo = pd.concat([pseudo, pd.DataFrame(probs[used], columns=soft_columns(len(classes)))], axis=1)
    return pd.concat([real, pseudo], ignore_index=True), used


def report(fold: int, params: dict, probs: np.ndarray, usable: np.ndarray, used: np.ndarray,
           classes: list[str]) -> dict:
    """How many test images fold k's student learns, at what threshold, and the class balance of their labels."""
    counts = np.bincount(probs[used].argmax(axis=1), minlength=len(classes))
    n_test, n_used = int(usable.sum()), int(used.sum())
    return {"fold": fold, "teacher": params["teacher"], "mode": params["mode"], "threshold": params["threshold"],
            "n_test": n_test, "n_used": n_used, "fraction_used": n_used / n_test if n_test else 0.0,
            "class_balance": {name: int(count) for name, count in zip(classes, counts)},
            "mean_confidence": float(probs[used].max(axis=1).mean()) if n_used else None}


def summary(counts: dict) -> str:
    balance = ", ".join(f"{name} {count}" for name, count in counts["class_balance"].items())
    return (f"fold {counts['fold']}: {counts['n_used']} of {counts['n_test']} usable test images pseudo-labelled "
            f"({counts['fraction_used']:.0%}, top probability >= {counts['threshold']}, teacher {counts['teacher']}, "
            f"mode {counts['mode']}); per class: {balance}")

