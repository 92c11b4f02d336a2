"""Scores of finished demo runs, out of sample and on the demo's hidden test labels (`data/demo/solution.csv`,
which no stage reads): no TTA, fastai's TTA mean and the calibrated submission, for the single-split demo and, when
it has run, the K-fold demo; for K-fold also each fold model alone. The figures the README quotes.

    snakemake --cores all                                                        # outputs/demo
    snakemake --cores all --configfile config/demo.yaml config/demo_kfold.yaml   # outputs/demo_kfold
    python bench/demo_scores.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, log_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/<name>.py` from anywhere

from pipeline.predict import passes  # noqa: E402
from pipeline.data.dataset import read_labeled_table, read_test_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def hidden_test(probs: np.ndarray, ids: list[str], classes: list[str], solution: pd.DataFrame) -> dict:
    """Log loss and accuracy of probabilities (rows = ids, columns = classes) on the hidden labels."""
    merged = solution.merge(pd.DataFrame(probs, columns=classes).assign(id=ids), on="id", validate="one_to_one")
    y, p = merged["label"].map(classes.index), merged[classes].to_numpy()
    return {"logloss": round(float(log_loss(y, p, labels=range(len(classes)))), 4),
            "accuracy": round(float(accuracy_score(y, p.argmax(1))), 4)}


def run_scores(out: Path, solution: pd.DataFrame, passes_file: str) -> dict:
    """No TTA / TTA mean / submission on the hidden test, and calibrate's out-of-sample report."""
    calibration = json.loads((out / "calibration" / "calibration.json").read_text())
    _, classes = read_labeled_table(out / "split.csv")
    ids = read_test_table(out / "test.csv")["id"].tolist()
    test_passes = np.load(out / passes_file)
    submission = pd.read_csv(out / "submission.csv", dtype={"id": str})
    return {
        "out_of_sample": {key: round(calibration[key], 4) for key in
                          ("logloss_no_tta", "accuracy_no_tta", "logloss_tta", "accuracy_tta", "logloss_calibrated",
                           "accuracy_calibrated", "plain_weight", "temperature")} | {"chosen": calibration["chosen"]},
        "hidden_test": {
            "no_tta": hidden_test(passes.plain(test_passes), ids, classes, solution),
            "tta_mean": hidden_test(passes.tta_mean(test_passes, calibration["n_aug"]), ids, classes, solution),
            "submission": hidden_test(submission[classes].to_numpy(), submission["id"].tolist(), classes, solution),
        },
    }


def main() -> None:
    solution = pd.read_csv(ROOT / "data" / "demo" / "solution.csv", dtype={"id": str})
    single, kfold = ROOT / "outputs" / "demo", ROOT / "outputs" / "demo_kfold"
    if (single / "submission.csv").exists():
        print(json.dumps({"single_split": run_scores(single, solution, "tta/test_passes.npy")}))
    if (kfold / "submission.csv").exists():
        scores = run_scores(kfold, solution, "oof/test_passes.npy")
        cv = json.loads((kfold / "cv_metrics.json").read_text())
        ids = read_test_table(kfold / "test.csv")["id"].tolist()
        folds = [hidden_test(np.load(kfold / "folds" / str(fold["fold"]) / "tta" / "test_probs.npy"), ids,
                             cv["classes"], solution) for fold in cv["folds"]]
        scores["folds"] = {"valid_logloss_mean": round(cv["fold_valid_logloss_mean"], 4),
                           "valid_logloss_std": round(cv["fold_valid_logloss_std"], 4),
                           "valid_accuracy_mean": round(cv["fold_valid_accuracy_mean"], 4),
                           "hidden_test_logloss_each": [fold["logloss"] for fold in folds],
                           "hidden_test_logloss_mean": round(float(np.mean([f["logloss"] for f in folds])), 4),
                           "hidden_test_accuracy_mean": round(float(np.mean([f["accuracy"] for f in folds])), 4)}
        print(json.dumps({"kfold": scores}))


if __name__ == "__main__":
    main()
