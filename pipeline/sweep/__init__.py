"""Hyperparameter sweeps (`python -m pipeline.sweep`): an Optuna study whose trials are members of the workflow, on
the recipe's own folds and out_dir, so that Snakemake computes only what each trial's overrides change (docs/sweeps.md).
"""
