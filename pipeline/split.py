"""Stage 1 - labels -> validation split.

Default: fastai 0.7's `get_cv_idxs` over `labels.csv` rows in file order (exactly the indices the lesson used).
Option: stratified K-fold (scikit-learn), one fold chosen in the recipe. The folder layout's `valid/` is the
validation set as is. Writes `split.csv` (id, label, is_valid, path), `test.csv` (id, path) and a class-count table.

    python -m pipeline.split --data-dir data/demo --split-csv out/split.csv --test-csv out/test.csv \
        --class-counts out/class_counts.csv --params '{"layout": "csv", "method": "fastai"}'
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from pipeline import cli
from pipeline.data import DataError, read_labeled, read_test
from pipeline.io import write_csv


def get_cv_idxs(n: int, cv_idx: int = 4, val_pct: float = 0.2, seed: int = 42) -> np.ndarray:
    """fastai 0.7 `get_cv_idxs`: validation row indices. Seeds NumPy's global generator, as 0.7 did."""
    np.random.seed(seed)
    n_val = int(val_pct * n)
    idx_start = cv_idx * n_val
    idxs = np.random.permutation(n)
    return idxs[idx_start: idx_start + n_val]


def stratified_fold_idxs(labels: pd.Series, n_folds: int, fold: int, seed: int) -> np.ndarray:
    too_small = labels.value_counts()[lambda counts: counts < n_folds]
    if len(too_small):
        raise DataError(f"stratified {n_folds}-fold split needs at least {n_folds} images per class; "
                        f"too few in: {', '.join(f'{c} ({n})' for c, n in too_small.items())}")
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)
    return list(folds)[fold][1]


def make_split(labeled: pd.DataFrame, params: dict) -> pd.DataFrame:
    split = labeled.copy()
    method = params.get("method", "fastai")
    if params.get("layout", "csv") == "folders":
        pass  # the valid/ folder is the validation set
    elif method == "fastai":
        val_idxs = get_cv_idxs(len(split), params.get("cv_idx", 4), params.get("val_pct", 0.2), params.get("seed", 42))
        split["is_valid"] = np.isin(np.arange(len(split)), val_idxs)
    elif method == "stratified_kfold":
        val_idxs = stratified_fold_idxs(split["label"], params.get("n_folds", 5), params.get("fold", 0),
                                        params.get("seed", 42))
        split["is_valid"] = np.isin(np.arange(len(split)), val_idxs)
    else:
        raise DataError(f"unknown split method {method!r}")
    return split[["id", "label", "is_valid", "path"]]


def class_counts(split: pd.DataFrame) -> pd.DataFrame:
    counts = (split.assign(part=np.where(split["is_valid"], "n_valid", "n_train"))
              .pivot_table(index="label", columns="part", values="id", aggfunc="count", fill_value=0)
              .reindex(columns=["n_train", "n_valid"], fill_value=0))
    return counts.rename_axis(columns=None).reset_index()


def check_classes(counts: pd.DataFrame) -> None:
    untrained = counts.loc[counts["n_train"] == 0, "label"].tolist()
    if untrained:
        raise DataError(f"classes with no training image after the split: {', '.join(untrained)}")
    unvalidated = counts.loc[counts["n_valid"] == 0, "label"].tolist()
    if unvalidated:
        print(f"warning: classes with no validation image: {', '.join(unvalidated)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--split-csv", required=True)
    parser.add_argument("--test-csv", required=True)
    parser.add_argument("--class-counts", required=True)
    args = parser.parse_args(argv)
    started = cli.announce("split", args.params)
    try:
        labeled = read_labeled(args.data_dir, args.params.get("layout", "csv"), args.params.get("suffix", ".jpg"))
        split = make_split(labeled, args.params)
        counts = class_counts(split)
        check_classes(counts)
        test = read_test(args.data_dir)
    except DataError as error:
        cli.fail(str(error))
    write_csv(split, args.split_csv)
    write_csv(test, args.test_csv)
    write_csv(counts, args.class_counts)
    print(f"{len(split)} labelled images: {int((~split['is_valid']).sum())} train, {int(split['is_valid'].sum())} "
          f"valid, {len(counts)} classes; {len(test)} test images", flush=True)
    cli.finish("split", started)


if __name__ == "__main__":
    main()
