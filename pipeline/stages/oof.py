"""K-fold runs - out-of-fold predictions and the fold ensemble.

Every labelled image of the folds run is predicted (with TTA as configured) by the one fold model that never saw
it: `oof.csv` holds id, label, fold, then one probability column per class (sorted, as the submission's columns
without a sample). Its log loss is the honest cross-validation score. The test prediction is the fold models'
average (arithmetic, or geometric with `average: geometric`), pass by pass, so the calibrate stage can still weigh
the plain pass against the augmented ones. Also writes the per-fold scores (`cv_metrics.json`, before calibration),
a plot of them and the OOF confusion matrix.

    python -m pipeline.stages.oof --split-csv out/split.csv --fold-dirs out/folds/0 out/folds/1 out/folds/2 \
        --oof-csv out/oof.csv --out-dir out/oof --plots-dir out/plots --params '{"folds": [0, 1, 2], "n_aug": 4}'
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import cli
from pipeline.compete import cv_scores
from pipeline.predict import passes
from pipeline.report import plots
from pipeline.data.dataset import class_indices, read_labeled_table, read_split
from pipeline.io import read_json, save_npy, write_csv, write_json

FOLD_SCORES = ["valid_logloss", "valid_accuracy", "valid_logloss_no_tta", "valid_accuracy_no_tta"]


def out_of_fold(assignment: pd.DataFrame, fold_dirs: list[Path]) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows of the folds run, in split.csv's order, and their (2, N, C) passes from their own fold's model."""
    rows, fold_passes = [], []
    for fold_dir in fold_dirs:
        _, valid, _ = read_split(fold_dir / "split.csv")
        valid_passes = np.load(fold_dir / "tta" / "valid_passes.npy")
        if valid_passes.shape[1] != len(valid):
            raise ValueError(f"{fold_dir}: {valid_passes.shape[1]} TTA rows for {len(valid)} validation images")
        rows.append(valid[["id", "label", "fold"]])
        fold_passes.append(valid_passes)
    predicted = pd.concat(rows, ignore_index=True)
    if predicted["id"].duplicated().any():
        raise ValueError(f"images predicted by two folds: {predicted['id'][predicted['id'].duplicated()].tolist()[:5]}")
    position = pd.Series(np.arange(len(predicted)), index=predicted["id"])
    order = position.reindex(assignment["id"]).dropna().astype(int).to_numpy()
    return predicted.iloc[order].reset_index(drop=True), np.concatenate(fold_passes, axis=1)[:, order]


def cv_metrics(y: np.ndarray, oof_passes: np.ndarray, fold_metrics: list[dict], classes: list[str],
               params: dict) -> dict:
    n_aug = params["n_aug"]
    folds = [{"fold": fold, "n_valid": metrics["n_valid"], **{key: metrics[key] for key in FOLD_SCORES}}
             for fold, metrics in zip(params["folds"], fold_metrics)]
    return cv_scores.cv_metrics(y=y, probs=passes.tta_mean(oof_passes, n_aug), plain=passes.plain(oof_passes),
                                folds=folds, n_aug=n_aug, average=params["average"], classes=classes)


# The slice (pipeline.workflow.slices): where its keys come from in the recipe, and what the workflow adds; `folds` is
# the folds the run has.
RECIPE_KEYS = ("tta.n_aug", "ensemble")
WORKFLOW_KEYS = ("folds",)


def print_scores(metrics: dict) -> None:
    """Each fold's validation scores, then the out-of-fold ones: what a user reads at the end of the log."""
    for fold in metrics["folds"]:
        print(f"fold {fold['fold']}: valid log loss {fold['valid_logloss']:.4f}, "
              f"accuracy {fold['valid_accuracy']:.4f} ({fold['n_valid']} images)", flush=True)
    print(f"out-of-fold ({metrics['n_oof']} images): log loss {metrics['oof_logloss']:.4f}, accuracy "
          f"{metrics['oof_accuracy']:.4f}; folds {metrics['fold_valid_logloss_mean']:.4f} "
          f"± {metrics['fold_valid_logloss_std']:.4f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS, WORKFLOW_KEYS)
    parser.add_argument("--split-csv", required=True, help="the K-fold run's fold assignment")
    parser.add_argument("--fold-dirs", required=True, nargs="+", help="out_dir/folds/<k> of each fold, in order")
    parser.add_argument("--oof-csv", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--plots-dir", required=True)
    args, params, started = cli.begin("oof", parser, argv)
    assignment, classes = read_labeled_table(args.split_csv)
    fold_dirs = [Path(folder) for folder in args.fold_dirs]
    try:
        rows, oof_passes = out_of_fold(assignment, fold_dirs)
    except ValueError as error:
        cli.fail(str(error))
    fold_metrics = [read_json(folder / "metrics.json") for folder in fold_dirs]
    test_passes = passes.average([np.load(folder / "tta" / "test_passes.npy") for folder in fold_dirs],
                                 params["average"])
    y = class_indices(rows["label"], classes).to_numpy()
    metrics = cv_metrics(y, oof_passes, fold_metrics, classes, params)
    oof_probs = passes.tta_mean(oof_passes, metrics["n_aug"])
    write_csv(pd.concat([rows, pd.DataFrame(oof_probs, columns=classes)], axis=1), args.oof_csv,
              float_format="%.10g")
    out_dir, plots_dir = Path(args.out_dir), Path(args.plots_dir)
    save_npy(oof_passes.astype(np.float32), out_dir / "valid_passes.npy")
    save_npy(test_passes.astype(np.float32), out_dir / "test_passes.npy")
    write_json(metrics, out_dir / "cv_metrics.json")
    plots.fold_scores(metrics, plots_dir / "cv_folds.png")
    from sklearn.metrics import confusion_matrix  # scikit-learn kept out of the stage's start-up: 0.7-1.7 s

    plots.confusion_matrix(confusion_matrix(y, oof_probs.argmax(1), labels=range(len(classes))), classes,
                           plots_dir / "oof_confusion_matrix.png",
                           f"out-of-fold, TTA: accuracy {metrics['oof_accuracy']:.3f} ({len(rows)} images)")
    print_scores(metrics)
    cli.finish("oof", started)


if __name__ == "__main__":
    main()
