import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from conftest import write_test_table
from pipeline.compete.calibration import cross_fitted
from pipeline.stages.calibrate import main

CLASSES = ["akita", "beagle", "corgi", "pug"]  # sorted: the order of the passes' columns


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def synthetic(n: int, seed: int = 0, sharpen: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(passes (2, n, C), y): labels drawn from Dirichlet probabilities; the plain pass ranks them right but is
    `sharpen` times over-confident in logit space, the augmented pass is blurred and noisy."""
    rng = np.random.default_rng(seed)
    true = rng.dirichlet(np.full(len(CLASSES), 0.5), size=n)
    y = np.array([rng.choice(len(CLASSES), p=row) for row in true])
    plain = softmax(sharpen * np.log(true))
    augmented = softmax(0.3 * np.log(true) + rng.normal(0, 1, true.shape))
    return np.stack([plain, augmented]).astype(np.float32), y


def run_stage(tmp_path, valid_passes, y, params, folds=None, test_passes=None, extra=()) -> dict:
    """Run the stage on files, as Snakemake would: a single split's split.csv (is_valid) unless `folds` is given."""
    tmp_path.mkdir(exist_ok=True)
    labels = [CLASSES[i] for i in y]
    if folds is None:  # the valid rows follow one train row per class, as in a real split.csv
        rows = pd.DataFrame({"label": CLASSES + labels, "is_valid": [False] * len(CLASSES) + [True] * len(y)})
        split_csv = rows_csv = tmp_path / "split.csv"
    else:
        rows = pd.DataFrame({"label": labels, "fold": folds})
        split_csv, rows_csv = tmp_path / "split.csv", tmp_path / "oof_rows.csv"
        kfold_split = pd.DataFrame({"id": range(len(y)), "label": labels, "path": "x.jpg", "fold": folds})
        kfold_split.to_csv(split_csv, index=False)  # a K-fold split.csv: no is_valid column
    rows.insert(0, "id", [f"img{i}" for i in range(len(rows))])
    rows.to_csv(rows_csv, index=False)
    np.save(tmp_path / "valid_passes.npy", valid_passes)
    test_passes = valid_passes[:, :7] if test_passes is None else test_passes
    np.save(tmp_path / "test_passes.npy", test_passes)
    if not (tmp_path / "test.csv").exists():
        write_test_table(tmp_path / "test.csv", test_passes.shape[1])
    main(["--split-csv", str(split_csv), "--valid-rows", str(rows_csv),
          "--valid-passes", str(tmp_path / "valid_passes.npy"), "--test-passes", str(tmp_path / "test_passes.npy"),
          "--test-csv", str(tmp_path / "test.csv"), "--out-dir", str(tmp_path / "calibration"),
          "--params", json.dumps(params), "--threads", "1", *extra])
    return json.loads((tmp_path / "calibration" / "calibration.json").read_text())


def test_over_confident_predictions_get_a_temperature_above_one_and_a_lower_log_loss(tmp_path):
    passes, y = synthetic(400)
    report = run_stage(tmp_path, passes, y, {"enabled": True, "n_aug": 4, "seed": 42})
    assert report["chosen"] == "fitted"
    assert 2 < report["fitted_on_all"]["temperature"] < 4.5  # undoes the x3 sharpening
    assert report["fitted_on_all"]["plain_weight"] > 0.8  # and drops the noisy augmented pass
    assert report["temperature"] == report["fitted_on_all"]["temperature"]  # the all-rows fit goes to the test set
    assert report["candidates"]["fitted"] < report["logloss_tta"]
    assert report["logloss_calibrated"] < min(report["logloss_tta"], report["logloss_no_tta"])
    valid_probs = np.load(tmp_path / "calibration" / "valid_probs.npy")
    assert report["logloss_calibrated"] == pytest.approx(log_loss(y, valid_probs, labels=range(len(CLASSES))))
    test_probs = np.load(tmp_path / "calibration" / "test_probs.npy")
    assert test_probs.shape == (7, len(CLASSES)) and test_probs.dtype == np.float32
    np.testing.assert_allclose(test_probs.sum(axis=1), 1.0, rtol=1e-5)
    assert (tmp_path / "calibration" / "reliability.png").stat().st_size > 0
    assert report["method"] == "cross-fitted over 5 random parts of the validation set"


def test_the_guard_never_reports_worse_than_tta_or_no_tta(tmp_path):
    fitted_lost = False
    for seed in range(4):  # well calibrated already, and 10 rows: a fit on 8 of them can only overfit
        passes, y = synthetic(10, seed=seed, sharpen=1.0)
        report = run_stage(tmp_path / str(seed), passes, y, {"enabled": True, "n_aug": 4, "seed": seed})
        assert report["logloss_calibrated"] <= report["logloss_tta"]
        assert report["logloss_calibrated"] <= report["logloss_no_tta"]
        assert report["logloss_calibrated"] == min(report["candidates"].values())
        fitted_lost |= report["candidates"]["fitted"] > report["logloss_tta"]
    assert fitted_lost  # the guard was needed at least once, not just passed by luck


def test_a_group_is_predicted_without_its_own_labels():
    passes, y = synthetic(200)
    groups = np.arange(200) % 5
    relabelled = np.where(groups == 0, (y + 1) % len(CLASSES), y)  # group 0 now follows another rule
    before, after = cross_fitted(passes, y, groups, 4), cross_fitted(passes, relabelled, groups, 4)
    np.testing.assert_array_equal(after[groups == 0], before[groups == 0])
    assert not np.allclose(after[groups != 0], before[groups != 0])  # the other groups' fits did see the change


def test_disabled_writes_fastais_tta_mean_unchanged(tmp_path):
    passes, y = synthetic(60)
    test_passes = synthetic(9, seed=1)[0]
    report = run_stage(tmp_path, passes, y, {"enabled": False, "n_aug": 4}, test_passes=test_passes)
    assert report["chosen"] == "tta_mean" and not report["enabled"]
    assert report["logloss_no_tta"] < report["logloss_tta"]  # chosen even though no TTA would have scored better
    assert report["logloss_calibrated"] == report["logloss_tta"]
    assert "fitted" not in report["candidates"] and "fitted_on_all" not in report
    assert (report["plain_weight"], report["temperature"]) == (0.2, 1.0)
    np.testing.assert_allclose(np.load(tmp_path / "calibration" / "test_probs.npy"),
                               (test_passes[0] + 4 * test_passes[1]) / 5, atol=1e-6)


def test_without_augmented_passes_only_the_temperature_is_fitted(tmp_path):
    passes, y = synthetic(300)
    plain_only = np.stack([passes[0], passes[0]])
    report = run_stage(tmp_path, plain_only, y, {"enabled": True, "n_aug": 0, "seed": 0})
    assert report["fitted_on_all"]["plain_weight"] == 1.0
    assert report["fitted_on_all"]["temperature"] > 1
    assert report["chosen"] == "fitted" and report["logloss_calibrated"] < report["logloss_tta"]
    assert report["logloss_tta"] == pytest.approx(report["logloss_no_tta"])


def test_rows_that_do_not_match_the_passes_fail_naming_the_file(tmp_path, capsys):
    passes, y = synthetic(20)
    with pytest.raises(SystemExit):
        run_stage(tmp_path, passes, y[:-1], {"enabled": True, "n_aug": 4})
    error = capsys.readouterr().err
    assert "valid_passes.npy has 20 rows" in error and "19" in error


def test_kfold_metrics_report_the_oof_figures_and_the_calibrated_ones(tmp_path):
    passes, y = synthetic(150)
    folds = np.arange(150) % 3
    cv = {"oof_logloss": 0.61, "oof_accuracy": 0.8, "oof_logloss_no_tta": 0.55, "n_folds": 3, "folds": [{}, {}, {}]}
    (tmp_path / "cv_in.json").write_text(json.dumps(cv))
    report = run_stage(tmp_path, passes, y, {"enabled": True, "n_aug": 4}, folds=folds,
                       extra=["--cv-metrics-in", str(tmp_path / "cv_in.json"), "--cv-metrics",
                              str(tmp_path / "cv_metrics.json"), "--metrics", str(tmp_path / "metrics.json")])
    assert report["method"] == "cross-fitted over the 3 folds' out-of-fold predictions"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["valid_logloss"] == 0.61 and metrics["valid_logloss_no_tta"] == 0.55
    assert metrics["valid_accuracy_no_tta"] is None and metrics["n_folds"] == 3
    assert metrics["valid_logloss_calibrated"] == report["logloss_calibrated"]
    assert metrics["scope"] == "out-of-fold"
    cv_metrics = json.loads((tmp_path / "cv_metrics.json").read_text())
    assert cv_metrics["folds"] == cv["folds"] and cv_metrics["calibrated"]["chosen"] == report["chosen"]


def test_an_unreadable_test_images_class_prior_is_never_calibrated(tmp_path):
    """The TTA stage gives an unreadable test image the training class prior; a temperature would sharpen it into a
    guess, so the calibrated test predictions keep that row as it came."""
    passes, y = synthetic(300, sharpen=4.0)
    prior = np.array([0.4, 0.3, 0.2, 0.1], dtype=np.float32)
    test_passes = passes[:, :5].copy()
    test_passes[:, 2] = prior
    write_test_table(tmp_path / "test.csv", 5, unusable=(2,))
    report = run_stage(tmp_path, passes, y, {"enabled": True, "n_aug": 4, "seed": 42}, test_passes=test_passes)
    assert report["temperature"] != 1.0  # the fitted calibration is chosen: it changes every other row
    calibrated = np.load(tmp_path / "calibration" / "test_probs.npy")
    np.testing.assert_allclose(calibrated[2], prior, atol=1e-6)
    assert not np.allclose(calibrated[0], test_passes[0, 0], atol=1e-3)
