"""K-fold cross-validation end to end: one real 3-fold run on the demo builder's data (each fold's chain with a
snapshot ensemble, out-of-fold predictions, the fold ensemble, calibration, the submission), then its rerun
contract with dry runs, and the recipes that must stop before anything runs."""
import contextlib
import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import log_loss

from conftest import CONFIGS, REPO, planned_jobs, snakemake, write_override

pytestmark = pytest.mark.workflow

RECIPE = CONFIGS / "kfold_csv.yaml"
FOLDS = [0, 1, 2]
FOLD_CHAIN = {"fold_split", "precompute", "train_head", "finetune", "tta"}


def read(path):
    return json.loads(path.read_text())


def hidden_test_logloss(probs: np.ndarray, test_ids: list[str], solution: pd.DataFrame, classes: list[str]) -> float:
    """Log loss on the demo's hidden test labels of probabilities in test.csv row order."""
    frame = pd.DataFrame(probs, columns=classes).assign(id=test_ids)
    merged = solution.merge(frame, on="id", validate="one_to_one")
    return log_loss(merged["label"].map(classes.index), merged[classes].to_numpy(), labels=range(len(classes)))


def test_every_labelled_image_is_predicted_once_by_the_fold_model_that_never_saw_it(kfold_run):
    out = kfold_run / "out"
    assignment = pd.read_csv(out / "split.csv", dtype={"id": str})
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    assert oof["id"].tolist() == assignment["id"].tolist()  # each labelled id once, in labels.csv order
    assert (oof["fold"] == assignment["fold"]).all() and (oof["label"] == assignment["label"]).all()
    for fold in FOLDS:
        fold_split = pd.read_csv(out / "folds" / str(fold) / "split.csv", dtype={"id": str}).set_index("id")
        predicted_here = oof.loc[oof["fold"] == fold, "id"]
        assert fold_split.loc[predicted_here, "is_valid"].all()  # never among that model's training images
        assert fold_split["is_valid"].sum() == len(predicted_here)
    classes = sorted(assignment["label"].unique())
    assert list(oof.columns) == ["id", "label", "fold", *classes]
    np.testing.assert_allclose(oof[classes].sum(axis=1), 1.0, atol=1e-6)


def test_oof_scores_are_a_recomputation_of_oof_csv_and_metrics_json_keeps_its_keys(kfold_run):
    out = kfold_run / "out"
    oof, cv = pd.read_csv(out / "oof.csv", dtype={"id": str}), read(out / "cv_metrics.json")
    classes = cv["classes"]
    y = oof["label"].map(classes.index)
    assert cv["oof_logloss"] == pytest.approx(log_loss(y, oof[classes].to_numpy(), labels=range(3)), abs=1e-6)
    assert cv["oof_accuracy"] == pytest.approx((oof[classes].to_numpy().argmax(1) == y).mean())
    fold_metrics = [read(out / "folds" / str(fold) / "metrics.json") for fold in FOLDS]
    assert [row["valid_logloss"] for row in cv["folds"]] == [m["valid_logloss"] for m in fold_metrics]
    assert cv["fold_valid_logloss_mean"] == pytest.approx(np.mean([m["valid_logloss"] for m in fold_metrics]))
    assert cv["fold_valid_logloss_std"] == pytest.approx(np.std([m["valid_logloss"] for m in fold_metrics]))
    metrics = read(out / "metrics.json")
    assert metrics["valid_logloss"] == cv["oof_logloss"] and metrics["valid_accuracy"] == cv["oof_accuracy"]
    assert (out / "plots" / "cv_folds.png").stat().st_size > 0


def test_each_fold_folder_holds_what_a_single_split_run_holds_and_shared_stages_ran_once(kfold_run):
    out = kfold_run / "out"
    n_test = len(pd.read_csv(out / "test.csv"))
    for fold in FOLDS:
        folder = out / "folds" / str(fold)
        for name in ("split.csv", "metrics.json", "head/model.pt", "finetune/1_32/model.pt",
                     "tta/confusion_matrix.png"):
            assert (folder / name).is_file(), (fold, name)
        assert np.load(folder / "tta" / "test_probs.npy").shape == (n_test, 3)
        # snapshots: 3 keeps the ends of cycles 1 and 2 besides the final weights, and TTA averaged all three
        snapshots = folder / "finetune" / "1_32" / "snapshots"
        assert sorted(path.name for path in snapshots.glob("*.pt")) == ["cycle_1.pt", "cycle_2.pt"]
        assert [row["checkpoint"] for row in read(folder / "metrics.json")["snapshots"]] == ["cycle_1.pt",
                                                                                             "cycle_2.pt", "model.pt"]
    assert not list(out.glob("folds/*/resized")) and list(out.glob("resized/*"))  # one shared resize cache


def test_interpretation_covers_every_out_of_fold_prediction(kfold_run):
    out = kfold_run / "out"
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    per_class = pd.read_csv(out / "interpret" / "per_class.csv").set_index("label")
    assert per_class["n"].to_dict() == oof["label"].value_counts().to_dict()
    calibrated = np.load(out / "calibration" / "valid_probs.npy")  # in oof.csv's order
    classes = read(out / "cv_metrics.json")["classes"]
    wrong = (np.array(classes)[calibrated.argmax(1)] != oof["label"]).sum()
    assert pd.read_csv(out / "interpret" / "most_confused.csv")["count"].sum() == wrong
    assert (out / "interpret" / "top_losses.png").read_bytes()[:4] == b"\x89PNG"


def test_calibration_never_hurts_and_final_tta_is_no_worse_than_none(kfold_run):
    out = kfold_run / "out"
    calibration, cv = read(out / "calibration" / "calibration.json"), read(out / "cv_metrics.json")
    assert calibration["logloss_calibrated"] <= calibration["logloss_tta"]
    assert calibration["logloss_calibrated"] <= calibration["logloss_no_tta"]
    # Two stages compute the uncalibrated OOF log loss from the same float32 probabilities in their own order of
    # sums: equal to 1e-12, so "no worse" allows that much (here calibration kept the TTA mean, at +1e-14).
    assert cv["calibrated"]["oof_logloss"] == calibration["logloss_calibrated"]
    assert calibration["logloss_calibrated"] <= cv["oof_logloss"] + 1e-12
    assert calibration["logloss_tta"] == pytest.approx(cv["oof_logloss"])


def test_the_fold_ensemble_submission_beats_the_mean_single_fold_on_hidden_labels(kfold_run):
    out, data = kfold_run / "out", kfold_run / "data"
    solution = pd.read_csv(data / "solution.csv", dtype={"id": str})
    test_ids = pd.read_csv(out / "test.csv", dtype={"id": str})["id"].tolist()
    classes = read(out / "cv_metrics.json")["classes"]
    single = [hidden_test_logloss(np.load(out / "folds" / str(fold) / "tta" / "test_probs.npy"), test_ids, solution,
                                  classes) for fold in FOLDS]
    # Like for like: the folds' averaged passes as fastai's TTA mean, uncalibrated as each fold's own figure is.
    plain, augmented = np.load(out / "oof" / "test_passes.npy")  # float32, as the stages average them
    n_aug = read(out / "calibration" / "calibration.json")["n_aug"]
    ensemble = hidden_test_logloss((plain + n_aug * augmented) / (n_aug + 1), test_ids, solution, classes)
    assert ensemble < np.mean(single), (ensemble, single)
    submission = pd.read_csv(out / "submission.csv", dtype={"id": str})
    assert hidden_test_logloss(submission[classes].to_numpy(), submission["id"].tolist(), solution,
                               classes) < math.log(3)


@contextlib.contextmanager
def moved_aside(folder):
    """A fold's outputs out of the way for a dry run, put back (with their mtimes) afterwards."""
    aside = folder.with_name(folder.name + ".aside")
    folder.rename(aside)
    try:
        yield
    finally:
        aside.rename(folder)


def dry_run(work, tmp_path, **override) -> dict[str, int]:
    configfiles = [RECIPE, write_override(tmp_path / "override.yaml", **override)] if override else [RECIPE]
    result = snakemake(REPO, work, "-n", configfiles=configfiles)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {rule: count for rule, count in planned_jobs(result.stdout).items() if rule != "all"}


AFTER_CALIBRATE = {"interpret": 1, "report_tables": 1, "submission": 1, "track": 1}  # track: logs the new run
CROSS_FOLD = {"oof": 1, "calibrate": 1, **AFTER_CALIBRATE}


def test_nothing_reruns_and_calibration_changes_rerun_only_calibrate_and_what_reads_it(kfold_run, tmp_path):
    assert dry_run(kfold_run, tmp_path) == {}
    assert dry_run(kfold_run, tmp_path, calibration={"enabled": False}) == {"calibrate": 1, **AFTER_CALIBRATE}
    assert dry_run(kfold_run, tmp_path, ensemble={"average": "geometric"}) == CROSS_FOLD


def test_adding_a_fold_runs_that_folds_chain_and_the_cross_fold_stages_only(kfold_run, tmp_path):
    with moved_aside(kfold_run / "out" / "folds" / "2"):  # as if the run had had folds: [0, 1]
        jobs = dry_run(kfold_run, tmp_path)
    assert jobs == {**{rule: 1 for rule in FOLD_CHAIN}, **CROSS_FOLD}
    assert dry_run(kfold_run, tmp_path, split={"folds": [0, 1]}) == CROSS_FOLD


def test_editing_a_fit_of_the_last_size_reruns_that_size_onwards_in_every_fold(kfold_run, tmp_path):
    finetune = yaml.safe_load(RECIPE.read_text())["finetune"]
    finetune[-1]["fits"][0]["lr"] = 2.0e-2
    jobs = dry_run(kfold_run, tmp_path, finetune=finetune)
    assert jobs == {"finetune": 3, "tta": 3, **CROSS_FOLD}
