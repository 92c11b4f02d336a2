"""Stage 6b - calibration for log loss: the plain TTA pass's weight against the augmented ones, and a temperature,
fitted out of sample and kept only where they beat both fastai's TTA mean and no TTA.

Passes are TTA's (2, N, C) probabilities: [0] the plain pass, [1] the mean of the n_aug augmented passes. Calibrated
= softmax(log(w * plain + (1 - w) * augmented) / T); fastai's TTA mean is w = 1/(n_aug+1), T = 1. The valid rows'
cross-fit groups are their `fold` (a K-fold run's OOF rows) or, without one, 5 random parts.

    python -m pipeline.stages.calibrate --split-csv out/split.csv --valid-rows out/split.csv \
        --valid-passes out/tta/valid_passes.npy --test-passes out/tta/test_passes.npy --test-csv out/test.csv \
        --out-dir out/calibration \
        --params '{"enabled": true, "n_aug": 4, "seed": 42}' \
        [--cv-metrics-in out/oof/cv_metrics.json --cv-metrics out/cv_metrics.json --metrics out/metrics.json]
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import cli
from pipeline.report import plots
from pipeline.compute import runtime
from pipeline.data.dataset import class_indices, read_labeled_table, read_rows, read_test_table
from pipeline.compete.calibration import calibrate, cross_fit_groups
from pipeline.io import read_json, remove_stale_temporaries, save_npy, write_json
# applied as the bundle applies it
from pipeline.offline.combine import calibrated as calibrated_probs
from pipeline.predict.passes import PLAIN


def calibrated_test_probs(passes: np.ndarray, usable: np.ndarray, report: dict) -> np.ndarray:
    """The test predictions calibrated, but for the unreadable images' rows: they keep the training class prior the
    TTA stage gave them (a temperature would sharpen a prior into a guess)."""
    if len(usable) != passes.shape[1]:
        cli.fail(f"test.csv has {len(usable)} rows but the test passes have {passes.shape[1]}: they must be aligned")
    probs = calibrated_probs(passes, report["plain_weight"], report["temperature"])
    probs[~usable] = passes[PLAIN][~usable]
    return probs


def kfold_reports(cv: dict, calibration: dict) -> tuple[dict, dict]:
    """A K-fold run's cv_metrics.json with the calibrated OOF figures added, and its headline metrics.json."""
    calibrated = {"oof_logloss": calibration["logloss_calibrated"], "oof_accuracy": calibration["accuracy_calibrated"],
                  **{key: calibration[key] for key in ("chosen", "plain_weight", "temperature")}}
    metrics = {"valid_logloss": cv["oof_logloss"], "valid_accuracy": cv["oof_accuracy"],
               "valid_logloss_no_tta": cv.get("oof_logloss_no_tta"),
               "valid_accuracy_no_tta": cv.get("oof_accuracy_no_tta"),
               "valid_logloss_calibrated": calibrated["oof_logloss"],
               "valid_accuracy_calibrated": calibrated["oof_accuracy"], "scope": "out-of-fold",
               **{key: cv[key] for key in ("n_folds", "classes", "n_aug") if key in cv}}
    return {**cv, "calibrated": calibrated}, metrics


def _check_passes(passes: np.ndarray, path: str, n_rows: int | None, n_classes: int, split_csv: str) -> None:
    if passes.ndim != 3 or passes.shape[0] != 2:
        cli.fail(f"{path}: shape {passes.shape}, expected (2, rows, classes): the plain and augmented passes")
    if n_rows is not None and passes.shape[1] != n_rows:
        cli.fail(f"{path} has {passes.shape[1]} rows but the valid rows table has {n_rows}: they must be aligned")
    if passes.shape[2] != n_classes:
        cli.fail(f"{path} has {passes.shape[2]} classes but {split_csv} has {n_classes}")


# The slice (pipeline.workflow.slices): where its keys come from in the recipe, and what the workflow adds.
RECIPE_KEYS = ("seed", "tta.n_aug", "calibration")


def read_inputs(args) -> tuple[pd.DataFrame, list[str], np.ndarray, np.ndarray]:
    """The validation rows, the classes, and the valid and test passes, checked against each other."""
    _, classes = read_labeled_table(args.split_csv)
    rows = read_rows(args.valid_rows)
    if unknown := sorted(set(rows["label"]) - set(classes)):
        cli.fail(f"{args.valid_rows} has labels that {args.split_csv} lacks: {unknown[:10]}")
    valid_passes, test_passes = np.load(args.valid_passes), np.load(args.test_passes)
    _check_passes(valid_passes, args.valid_passes, len(rows), len(classes), args.split_csv)
    _check_passes(test_passes, args.test_passes, None, len(classes), args.split_csv)
    return rows, classes, valid_passes, test_passes


def reliability_plot(report: dict, probs: dict, y: np.ndarray, path: Path) -> None:
    """No TTA, fastai's TTA mean and the chosen calibration, each with its out-of-sample log loss."""
    shown = {"no TTA": "plain", "TTA mean": "tta_mean", f"calibrated ({report['chosen']})": report["chosen"]}
    curves = {f"{label}, log loss {report['candidates'][key]:.4f}": (probs[key].argmax(1) == y, probs[key].max(1))
              for label, key in shown.items()}
    plots.reliability(curves, path, f"valid, out of sample; chosen: {report['chosen']}")


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS)
    parser.add_argument("--split-csv", required=True, help="for the class list only")
    parser.add_argument("--valid-rows", required=True, help="CSV aligned with --valid-passes: label, maybe fold")
    parser.add_argument("--valid-passes", required=True)
    parser.add_argument("--test-passes", required=True)
    parser.add_argument("--test-csv", required=True, help="test.csv: its unreadable images keep the class prior")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--cv-metrics-in", help="a K-fold run's uncalibrated OOF figures")
    parser.add_argument("--cv-metrics", help="where to write them with the calibrated figures added")
    parser.add_argument("--metrics", help="where to write the K-fold run's headline metrics")
    args, params, started = cli.begin("calibrate", parser, argv)
    runtime.setup(args.threads, params["seed"], "cpu")  # two parameters on (N, C) arrays: no GPU needed
    if args.cv_metrics_in and not (args.cv_metrics and args.metrics):
        cli.fail("--cv-metrics-in needs --cv-metrics and --metrics to write to")
    rows, classes, valid_passes, test_passes = read_inputs(args)
    groups, method = cross_fit_groups(rows, params["seed"])
    enabled = params["enabled"]
    if enabled and len(np.unique(groups)) < 2:
        cli.fail(f"{args.valid_rows}: cross-fitting needs at least 2 groups of rows; set calibration.enabled: false")
    y = class_indices(rows["label"], classes).to_numpy()
    report, probs = calibrate(valid_passes, y, groups, params["n_aug"], enabled)
    report["method"] = method if enabled else "not fitted (calibration disabled): fastai's TTA mean"
    out_dir = Path(args.out_dir)
    remove_stale_temporaries(out_dir)
    save_npy(probs[report["chosen"]], out_dir / "valid_probs.npy")
    save_npy(calibrated_test_probs(test_passes, read_test_table(args.test_csv)["usable"].to_numpy(bool),
                                   report).astype(np.float32), out_dir / "test_probs.npy")
    reliability_plot(report, probs, y, out_dir / "reliability.png")
    write_json(report, out_dir / "calibration.json")
    if args.cv_metrics_in:
        cv_metrics, metrics = kfold_reports(read_json(args.cv_metrics_in), report)
        write_json(cv_metrics, args.cv_metrics)
        write_json(metrics, args.metrics)
    print(f"log loss: no TTA {report['logloss_no_tta']:.4f}, TTA (fastai mean) {report['logloss_tta']:.4f}, "
          f"calibrated {report['logloss_calibrated']:.4f} ({report['chosen']}: plain weight "
          f"{report['plain_weight']:.2f}, temperature {report['temperature']:.2f}; {report['method']})", flush=True)
    cli.finish("calibrate", started)


if __name__ == "__main__":
    main()
