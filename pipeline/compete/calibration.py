"""Calibration for log loss, fitted out of sample: the plain TTA pass's weight against the augmented ones, and a
temperature (the calibrate stage's fit, and how a sweep scores a trial as its submission would be scored).

Passes are TTA's (2, N, C) probabilities: [0] the plain pass, [1] the mean of the n_aug augmented passes. Calibrated
= softmax(log(w * plain + (1 - w) * augmented) / T); fastai's TTA mean is w = 1/(n_aug+1), T = 1.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

# applied as the bundle applies it
from pipeline.offline.combine import CALIBRATION_FLOOR, calibrated as calibrated_probs


def cross_fit_groups(rows: pd.DataFrame, seed: int) -> tuple[np.ndarray, str]:
    """Each row's group and how the groups were made: the OOF fold it came from, else one of 5 random parts."""
    if "fold" in rows and rows["fold"].nunique() > 1:  # not a single stratified split's one validation fold
        return rows["fold"].to_numpy(), f"cross-fitted over the {rows['fold'].nunique()} folds' out-of-fold predictions"
    from sklearn.model_selection import KFold  # scikit-learn kept out of the stage's start-up: 0.7-1.7 s

    groups = np.empty(len(rows), dtype=int)
    parts = KFold(n_splits=min(5, len(rows)), shuffle=True, random_state=seed)
    for group, (_, part) in enumerate(parts.split(groups)):
        groups[part] = group
    return groups, f"cross-fitted over {parts.n_splits} random parts of the validation set"


def _log_probs(plain, augmented, plain_weight, temperature) -> torch.Tensor:
    """offline_combine.calibrated in torch, for the fit's gradients."""
    mixed = plain_weight * plain + (1 - plain_weight) * augmented
    return torch.log_softmax(torch.log(mixed.clamp_min(CALIBRATION_FLOOR)) / temperature, dim=-1)


def fit(passes: np.ndarray, y: np.ndarray, n_aug: int) -> tuple[float, float]:
    """(plain weight, temperature) minimising log loss, from fastai's TTA mean; with n_aug = 0 only the temperature."""
    plain, augmented = torch.from_numpy(np.asarray(passes, dtype=np.float64))
    target = torch.tensor(y, dtype=torch.int64)
    # Unconstrained parameters keep w in (0, 1) and T > 0 without bounds: w = sigmoid(-log n_aug) = 1/(n_aug+1).
    weight_logit = torch.tensor(-math.log(max(n_aug, 1)), dtype=torch.float64, requires_grad=True)
    log_temperature = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight_logit, log_temperature] if n_aug else [log_temperature],
                                  max_iter=50, line_search_fn="strong_wolfe")

    def plain_weight():
        return torch.sigmoid(weight_logit) if n_aug else torch.ones((), dtype=torch.float64)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.nll_loss(_log_probs(plain, augmented, plain_weight(), log_temperature.exp()), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return plain_weight().item(), log_temperature.exp().item()


def cross_fitted(passes: np.ndarray, y: np.ndarray, groups: np.ndarray, n_aug: int) -> np.ndarray:
    """Each group's probabilities from parameters fitted on the other groups only: never on the row itself."""
    probs = np.empty(passes.shape[1:])
    for group in np.unique(groups):
        held_out = groups == group
        probs[held_out] = calibrated_probs(passes[:, held_out], *fit(passes[:, ~held_out], y[~held_out], n_aug))
    return probs


def calibrate(passes: np.ndarray, y: np.ndarray, groups: np.ndarray, n_aug: int, enabled: bool) -> tuple[dict, dict]:
    """The report and each candidate's out-of-sample probabilities for the valid rows."""
    from sklearn.metrics import accuracy_score, log_loss  # kept out of the stage's start-up, as KFold is

    settings = {"tta_mean": (1 / (n_aug + 1), 1.0), "plain": (1.0, 1.0)}
    probs = {name: calibrated_probs(passes, *setting) for name, setting in settings.items()}
    if enabled:
        settings["fitted"] = fit(passes, y, n_aug)
        probs["fitted"] = cross_fitted(passes, y, groups, n_aug)
    labels = range(passes.shape[2])
    losses = {name: float(log_loss(y, candidate, labels=labels)) for name, candidate in probs.items()}
    # The guard: every candidate is scored on rows its parameters never saw and the lowest wins, so the calibrated
    # log loss is never above fastai's TTA mean nor no TTA. Ties keep the first: tta_mean, then plain, then fitted.
    # Disabled, the stage is fastai's TTA and nothing else, even where no TTA would have scored better.
    chosen = min(losses, key=losses.get) if enabled else "tta_mean"
    accuracy = {name: float(accuracy_score(y, probs[name].argmax(1))) for name in ("plain", "tta_mean", chosen)}
    report = {"enabled": enabled, "n_rows": len(y), "n_aug": n_aug, "chosen": chosen, "candidates": losses,
              "plain_weight": settings[chosen][0], "temperature": settings[chosen][1],
              "logloss_no_tta": losses["plain"], "accuracy_no_tta": accuracy["plain"],
              "logloss_tta": losses["tta_mean"], "accuracy_tta": accuracy["tta_mean"],
              "logloss_calibrated": losses[chosen], "accuracy_calibrated": accuracy[chosen]}
    if enabled:
        report["fitted_on_all"] = {"plain_weight": settings["fitted"][0], "temperature": settings["fitted"][1]}
    return report, probs
