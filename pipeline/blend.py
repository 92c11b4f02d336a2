"""Blending several members' predictions (a recipe's `members`, `blend`): how weights combine them.

`member_probs` is always (M, N, C): M members' probabilities for the same N rows, classes in the same order.
"""
from __future__ import annotations

import numpy as np
from scipy.special import softmax

FLOOR = 1e-15  # a member can give a class exactly 0; its log must stay finite


def combine(member_probs: np.ndarray, weights: np.ndarray, space: str) -> np.ndarray:
    """The blend of (M, N, C) probabilities with M weights: their weighted mean (`probs`), or the softmax of their
    weighted log-probabilities (`log_probs`, a weighted geometric mean renormalised over the classes)."""
    member_probs, weights = np.asarray(member_probs, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    if space == "probs":
        blended = np.tensordot(weights, member_probs, axes=1)
        return blended / blended.sum(axis=-1, keepdims=True)
    if space == "log_probs":
        return softmax(np.tensordot(weights, np.log(np.clip(member_probs, FLOOR, None)), axes=1), axis=-1)
    raise ValueError(f"unknown blend space {space!r}; expected probs or log_probs")
