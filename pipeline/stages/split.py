"""Stage 1 - labels -> validation split.

Default: fastai 0.7's `get_cv_idxs` over `labels.csv` rows in file order (exactly the indices the lesson used).
Option: stratified K-fold (scikit-learn): one fold chosen in the recipe, or, for a K-fold run (`assign_folds`), every
image's validation fold in a `fold` column, from which `pipeline.stages.fold_split` derives each fold's split. The folder
layout's `valid/` is the validation set as is. Images the image-stats stage found unreadable (`bad_images.csv`, only non-empty with
`on_bad_image: skip`) are left out of the split; test images are never dropped: `test.csv` (id, path, usable) keeps
every one, and the TTA stage gives an unusable one the training class prior. Writes `split.csv` (id, label,
is_valid, path), `test.csv` and a class-count table.

    python -m pipeline.stages.split --data-dir data/demo --bad-images out/stats/bad_images.csv \
        --split-csv out/split.csv --test-csv out/test.csv --class-counts out/class_counts.csv \
        --params '{"layout": "csv", "method": "fastai"}'
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import cli
from pipeline.data.dataset import (DataError, check_classes, class_counts, read_bad_paths, read_labeled, read_test,
                                   sample_classes, unlabelled_images)
from pipeline.io import write_csv


def get_cv_idxs(n: int, cv_idx: int = 4, val_pct: float = 0.2, seed: int = 42) -> np.ndarray:
    """fastai 0.7 `get_cv_idxs`: validation row indices. Seeds NumPy's global generator, as 0.7 did."""
    np.random.seed(seed)
    n_val = int(val_pct * n)
    idx_start = cv_idx * n_val
    idxs = np.random.permutation(n)
    return idxs[idx_start: idx_start + n_val]


def stratified_folds(labels: pd.Series, n_folds: int, seed: int) -> np.ndarray:
    """The validation fold of every row (scikit-learn's shuffled StratifiedKFold)."""
    too_small = labels.value_counts()[lambda counts: counts < n_folds]
    if len(too_small):
        raise DataError(f"stratified {n_folds}-fold split needs at least {n_folds} images per class; "
                        f"too few in: {', '.join(f'{c} ({n})' for c, n in too_small.items())}")
    folds = np.empty(len(labels), dtype=int)
    from sklearn.model_selection import StratifiedKFold  # 3 s of imports that fastai's split never needs

    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, valid_idxs) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        folds[valid_idxs] = fold
    return folds


def leave_out_bad(labeled: pd.DataFrame, bad_paths: set[str]) -> pd.DataFrame:
    """Drop labelled images listed as unreadable. Row order (and so fastai's indices) is that of what remains."""
    dropped = labeled["path"].isin(bad_paths)
    if dropped.any():
        print(f"leaving out {int(dropped.sum())} unreadable labelled images: "
              f"{', '.join(labeled.loc[dropped, 'path'][:20])}", flush=True)
    return labeled[~dropped].reset_index(drop=True)


def make_split(labeled: pd.DataFrame, params: dict) -> pd.DataFrame:
    split = labeled.copy()
    method = params["method"]
    if params["layout"] == "folders":
        pass  # the valid/ folder is the validation set
    elif method == "fastai":
        val_idxs = get_cv_idxs(len(split), params["cv_idx"], params["val_pct"], params["seed"])
        split["is_valid"] = np.isin(np.arange(len(split)), val_idxs)
    elif method == "stratified_kfold":
        split["fold"] = stratified_folds(split["label"], params["n_folds"], params["seed"])
        if params.get("assign_folds"):  # a K-fold run: each fold's own split.csv is derived from this one
            return split[["id", "label", "fold", "path"]]
        split["is_valid"] = split["fold"] == params["fold"]
        return split[["id", "label", "is_valid", "path", "fold"]]
    else:
        raise DataError(f"unknown split method {method!r}")
    return split[["id", "label", "is_valid", "path"]]


# The slice (pipeline.workflow.slices): where its keys come from in the recipe, and what the workflow adds; a K-fold run
# adds `assign_folds`.
RECIPE_KEYS = ("data.layout", "data.suffix", "data.sample_submission", "split")
WORKFLOW_KEYS = ("assign_folds",)
# fastai's split draws val_pct of the rows (cv_idx); a single fold of stratified_kfold is fold `fold` of n_folds. The
# sample submission's classes are the only ones labels.csv may spell like a missing value (`NaN`): csv layout only.
USED_WHEN = {"split.val_pct": ("split.method", "fastai"), "split.cv_idx": ("split.method", "fastai"),
             "split.n_folds": ("split.method", "stratified_kfold"), "split.fold": ("split.method", "stratified_kfold"),
             "data.sample_submission": ("data.layout", "csv")}


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS, WORKFLOW_KEYS)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--bad-images", help="bad_images.csv from the image-stats stage")
    parser.add_argument("--split-csv", required=True)
    parser.add_argument("--test-csv", required=True)
    parser.add_argument("--class-counts", required=True)
    args, params, started = cli.begin("split", parser, argv)
    bad_paths = read_bad_paths(args.bad_images)
    try:
        named = sample_classes(Path(args.data_dir) / params["sample_submission"]) if params["layout"] == "csv" else ()
        labeled = read_labeled(args.data_dir, params["layout"], params["suffix"], named)
        split = make_split(leave_out_bad(labeled, bad_paths), params)
        counts = class_counts(split)
        check_classes(counts)
        test = read_test(args.data_dir)
    except DataError as error:
        cli.fail(str(error))
    if params["layout"] == "csv":
        unlabelled = unlabelled_images(args.data_dir, labeled)
        if unlabelled:
            print(f"skipping {len(unlabelled)} images in train/ without a row in labels.csv: "
                  f"{', '.join(unlabelled[:20])}", flush=True)
    test["usable"] = ~test["path"].isin(bad_paths)
    write_csv(split, args.split_csv)
    write_csv(test, args.test_csv)
    write_csv(counts, args.class_counts)
    parts = (f"{split['fold'].nunique()} stratified folds of {len(split) // split['fold'].nunique()}+"
             if "is_valid" not in split else
             f"{int((~split['is_valid']).sum())} train, {int(split['is_valid'].sum())} valid")
    print(f"{len(split)} labelled images: {parts}, {len(counts)} classes; {len(test)} test images "
          f"({int((~test['usable']).sum())} unreadable)", flush=True)
    cli.finish("split", started)


if __name__ == "__main__":
    main()
