"""Predictions of trained models: inference passes, TTA."""
