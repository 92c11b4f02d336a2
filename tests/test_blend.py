"""The blend of several members' out-of-fold predictions: the weights, the stacker, the cross-fit that keeps the
reported OOF figure honest, and the stage on member folders laid out as the oof stage writes them."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from conftest import write_test_table
from pipeline.compete import blending as blend
from pipeline.predict import passes
from pipeline.stages.blend import main

CLASSES = ["akita", "beagle", "corgi", "pug"]
FOLDS = 3


def member(y: np.ndarray, skill: float, seed: int) -> np.ndarray:
    """(N, C) probabilities whose true-class logit is raised by `skill` over Gaussian noise: higher is better."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (len(y), len(CLASSES)))
    logits[np.arange(len(y)), y] += skill
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def synthetic(n: int = 300, skills=(1.5, 1.0, 0.5), seed: int = 0):
    """(member_probs (M, N, C), y, folds): members of different skill, rows in FOLDS interleaved folds."""
    y = np.random.default_rng(seed).integers(0, len(CLASSES), n)
    return np.stack([member(y, skill, seed + 1 + m) for m, skill in enumerate(skills)]), y, np.arange(n) % FOLDS


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(log_loss(y, probs, labels=range(len(CLASSES))))


def weights_blender(space="probs"):
    return lambda: blend.blender({"method": "weights", "space": space}, len(CLASSES))


def stacker(seed=0):
    return lambda: blend.blender({"method": "stacker", "stacker_c": 1.0, "seed": seed}, len(CLASSES))


@pytest.mark.parametrize("space", ["probs", "log_probs"])
def test_weights_are_non_negative_sum_to_one_and_beat_every_member_in_sample(space):
    member_probs, y, _ = synthetic(skills=(1.2, 1.0, 0.9))
    weights = blend.fit_weights(member_probs, y, space)
    assert weights.shape == (3,) and (weights >= 0).all() and weights.sum() == pytest.approx(1.0, abs=1e-12)
    blended = nll(blend.combine(member_probs, weights, space), y)
    assert all(blended <= nll(probs, y) + 1e-12 for probs in member_probs)
    assert blended < min(nll(probs, y) for probs in member_probs) - 0.01  # independent noise: mixing pays
    assert np.array_equal(weights, blend.fit_weights(member_probs, y, space))  # deterministic


@pytest.mark.parametrize("space", ["probs", "log_probs"])
def test_a_clearly_better_member_gets_most_of_the_weight(space):
    member_probs, y, _ = synthetic(skills=(0.3, 3.0, 0.3))
    weights = blend.fit_weights(member_probs, y, space)
    assert weights[1] > 0.8 and weights.argmax() == 1


@pytest.mark.parametrize("space", ["probs", "log_probs"])
def test_the_fitted_weights_are_the_optimum_of_their_own_space(space):
    """Two members: a grid over the simplex finds nothing better, and the two spaces' blends differ."""
    member_probs, y, _ = synthetic(skills=(1.2, 0.9))
    weights = blend.fit_weights(member_probs, y, space)
    grid = [nll(blend.combine(member_probs, [w, 1 - w], space), y) for w in np.linspace(0, 1, 201)]
    assert nll(blend.combine(member_probs, weights, space), y) <= min(grid) + 1e-9
    other = "log_probs" if space == "probs" else "probs"
    assert not np.allclose(blend.combine(member_probs, weights, space), blend.combine(member_probs, weights, other))


@pytest.mark.parametrize("new_blender", [weights_blender("probs"), weights_blender("log_probs"), stacker()],
                         ids=["weights-probs", "weights-log_probs", "stacker"])
def test_the_cross_fitted_predictions_of_a_fold_never_saw_its_labels(new_blender):
    member_probs, y, folds = synthetic()
    held_out = folds == 1
    relabelled = y.copy()
    relabelled[held_out] = np.random.default_rng(9).integers(0, len(CLASSES), held_out.sum())
    before, _ = blend.cross_fitted(member_probs, y, folds, new_blender)
    after, _ = blend.cross_fitted(member_probs, relabelled, folds, new_blender)
    np.testing.assert_array_equal(after[held_out], before[held_out])
    assert not np.allclose(after[~held_out], before[~held_out])  # the other folds' fits did see fold 1
    in_sample = [new_blender().fit(member_probs, labels).predict(member_probs)[held_out] for labels in (y, relabelled)]
    assert not np.allclose(*in_sample)  # fitted on every row, fold 1's own predictions move with its labels


def test_cross_fitted_weights_are_fitted_without_their_fold():
    member_probs, y, folds = synthetic()
    blended, per_fold = blend.cross_fitted(member_probs, y, folds, weights_blender())
    assert sorted(per_fold) == [0, 1, 2]
    for fold, fitted in per_fold.items():
        np.testing.assert_array_equal(fitted.weights, blend.fit_weights(member_probs[:, folds != fold],
                                                                        y[folds != fold], "probs"))
        np.testing.assert_allclose(blended[folds == fold],
                                   blend.combine(member_probs[:, folds == fold], fitted.weights, "probs"))


def test_the_stacker_gives_probabilities_over_every_class_even_one_its_fit_never_saw():
    member_probs, y, folds = synthetic(skills=(2.0, 1.5))
    y[(y == 1) & (folds != 0)] = 2  # class 1 only in fold 0: the fit for fold 0 never sees it
    blended, _ = blend.cross_fitted(member_probs, y, folds, stacker())
    assert blended.shape == (len(y), len(CLASSES)) and (blended >= 0).all()
    np.testing.assert_allclose(blended.sum(axis=1), 1.0)
    fold_0, others = folds == 0, folds != 0
    assert (blended[fold_0, 1] == 0).all() and (blended[others, 1] > 0).all()
    # the columns after the unseen class stay their own class's: fold 0's other rows are mostly predicted right
    seen = fold_0 & (y != 1)
    assert (blended[seen].argmax(1) == y[seen]).mean() > 0.7
    assert nll(blended[others], y[others]) < min(nll(probs[others], y[others]) for probs in member_probs)


# The stage, on member folders as the oof stage writes them.

def write_member(folder, probs, plain, test, rows, n_aug=4) -> None:
    (folder / "oof").mkdir(parents=True)
    y = rows["label"].map(CLASSES.index).to_numpy()
    # passes whose TTA mean with n_aug is `probs`: augmented = (probs * (n_aug + 1) - plain) / n_aug
    augmented = (probs * (n_aug + 1) - plain) / n_aug
    np.save(folder / "oof" / "valid_passes.npy", np.stack([plain, augmented]).astype(np.float32))
    np.save(folder / "oof" / "test_passes.npy", np.stack([test, test]).astype(np.float32))
    oof = passes.tta_mean(np.load(folder / "oof" / "valid_passes.npy"), n_aug)
    pd.concat([rows, pd.DataFrame(oof, columns=CLASSES)], axis=1).to_csv(folder / "oof.csv", index=False)
    cv = {"n_aug": n_aug, "oof_logloss": nll(oof, y), "oof_accuracy": float((oof.argmax(1) == y).mean()),
          "classes": CLASSES, "folds": []}
    (folder / "oof" / "cv_metrics.json").write_text(json.dumps(cv))


def member_folders(tmp_path, n=120, n_test=10):
    """split.csv and two member folders: `a` the better one; plain passes a blurred copy of the TTA mean."""
    member_probs, y, folds = synthetic(n, skills=(1.5, 1.0))
    rows = pd.DataFrame({"id": [f"img{i:03d}" for i in range(n)], "label": np.array(CLASSES)[y], "fold": folds})
    rows.assign(path="x.jpg").to_csv(tmp_path / "split.csv", index=False)
    dirs = []
    for name, probs in zip("ab", member_probs):
        plain = 0.8 * probs + 0.2 / len(CLASSES)
        test = member(np.zeros(n_test, dtype=int), 1.0, seed=ord(name))
        write_member(tmp_path / name, probs, plain, test, rows)
        dirs.append(tmp_path / name)
    return dirs, rows


def run_stage(tmp_path, dirs, params=None, names=("a", "b")):
    params = {"method": "weights", "space": "probs", "stacker_c": 1.0, "seed": 42} if params is None else params
    main(["--split-csv", str(tmp_path / "split.csv"), "--members", *names, "--member-dirs", *map(str, dirs),
          "--out-dir", str(tmp_path / "blend"), "--params", json.dumps(params)])
    return tmp_path / "blend"


def test_the_stage_writes_the_blend_as_the_oof_stage_writes_a_member(tmp_path):
    dirs, rows = member_folders(tmp_path)
    out = run_stage(tmp_path, dirs)
    report = json.loads((out / "weights.json").read_text())
    assert {"method", "space", "classes", "n_oof", "members", "best_member", "best_member_oof_logloss",
            "blend_oof_logloss", "blend_oof_accuracy", "in_sample_oof_logloss", "fold_weights", "folds"} <= set(report)
    assert [m["name"] for m in report["members"]] == ["a", "b"] and report["best_member"] == "a"
    assert sum(m["weight"] for m in report["members"]) == pytest.approx(1.0)
    assert report["folds"] == [0, 1, 2] and sorted(report["fold_weights"]) == ["0", "1", "2"]
    assert report["in_sample_oof_logloss"] <= report["best_member_oof_logloss"] + 1e-12
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    assert oof[["id", "label", "fold"]].equals(rows) and list(oof.columns[3:]) == CLASSES
    y = rows["label"].map(CLASSES.index).to_numpy()
    assert report["blend_oof_logloss"] == pytest.approx(nll(oof[CLASSES].to_numpy(), y), abs=1e-7)
    valid_passes, test_passes = np.load(out / "valid_passes.npy"), np.load(out / "test_passes.npy")
    assert valid_passes.shape == (2, len(rows), 4) and test_passes.shape == (2, 10, 4)
    assert valid_passes.dtype == test_passes.dtype == np.float32
    np.testing.assert_array_equal(valid_passes[0], valid_passes[1])
    np.testing.assert_allclose(valid_passes[0], oof[CLASSES].to_numpy(), atol=1e-6)
    weights = [m["weight"] for m in report["members"]]
    member_tests = np.stack([np.load(folder / "oof" / "test_passes.npy")[1] for folder in dirs])
    np.testing.assert_allclose(test_passes[0], blend.combine(member_tests, weights, "probs"), atol=1e-6)
    cv = json.loads((out / "cv_metrics.json").read_text())
    assert cv["n_aug"] == 0 and cv["n_oof"] == len(rows) and cv["n_folds"] == 3 and cv["classes"] == CLASSES
    assert cv["oof_logloss"] == report["blend_oof_logloss"]
    assert cv["oof_logloss_no_tta"] > cv["oof_logloss"]  # the members' blurred plain passes, same weights
    assert [fold["n_valid"] for fold in cv["folds"]] == [40, 40, 40]
    assert {"valid_logloss", "valid_accuracy", "valid_logloss_no_tta", "valid_accuracy_no_tta"} <= set(cv["folds"][0])
    assert (out / "correlation.png").stat().st_size > 0 and (out / "cv_folds.png").stat().st_size > 0


def test_the_stage_with_the_stacker_has_no_weights(tmp_path):
    dirs, _ = member_folders(tmp_path)
    out = run_stage(tmp_path, dirs, {"method": "stacker", "seed": 42})  # space and stacker_c: the schema's defaults
    report = json.loads((out / "weights.json").read_text())
    assert [m["weight"] for m in report["members"]] == [None, None] and "fold_weights" not in report
    np.testing.assert_allclose(np.load(out / "test_passes.npy").sum(axis=2), 1.0, atol=1e-5)


def test_calibrate_runs_on_the_blend_and_fits_only_a_temperature(tmp_path):
    from pipeline.stages import calibrate

    dirs, _ = member_folders(tmp_path)
    out = run_stage(tmp_path, dirs)
    test_csv = tmp_path / "test.csv"
    write_test_table(test_csv, 10)
    calibrate.main(["--split-csv", str(tmp_path / "split.csv"), "--valid-rows", str(out / "oof.csv"),
                    "--valid-passes", str(out / "valid_passes.npy"), "--test-passes", str(out / "test_passes.npy"),
                    "--test-csv", str(test_csv), "--out-dir", str(tmp_path / "calibration"),
                    "--cv-metrics-in", str(out / "cv_metrics.json"),
                    "--cv-metrics", str(tmp_path / "cv_metrics.json"), "--metrics", str(tmp_path / "metrics.json"),
                    "--params", json.dumps({"enabled": True, "n_aug": 0, "seed": 42}), "--threads", "1"])
    report = json.loads((tmp_path / "calibration" / "calibration.json").read_text())
    assert report["n_rows"] == 120 and report["logloss_tta"] == pytest.approx(report["logloss_no_tta"])
    assert report["plain_weight"] == 1.0


@pytest.mark.parametrize("change", ["rows", "folds", "classes", "test rows"])
def test_the_stage_refuses_a_member_unlike_the_first_naming_it(tmp_path, capsys, change):
    dirs, _ = member_folders(tmp_path)
    oof = pd.read_csv(dirs[1] / "oof.csv", dtype={"id": str})
    if change == "rows":
        oof.iloc[[0, 1]] = oof.iloc[[1, 0]].to_numpy()
    elif change == "folds":
        oof.loc[0, "fold"] = 1
    elif change == "classes":
        cv = json.loads((dirs[1] / "oof" / "cv_metrics.json").read_text())
        (dirs[1] / "oof" / "cv_metrics.json").write_text(json.dumps({**cv, "classes": CLASSES[::-1]}))
    else:
        test_passes = np.load(dirs[1] / "oof" / "test_passes.npy")
        np.save(dirs[1] / "oof" / "test_passes.npy", test_passes[:, :-1])
    oof.to_csv(dirs[1] / "oof.csv", index=False)
    with pytest.raises(SystemExit):
        run_stage(tmp_path, dirs)
    error = capsys.readouterr().err
    assert str(dirs[1]) in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "blend").exists()


def test_the_report_tables_show_the_blend_only_when_given(tmp_path):
    from pipeline.stages import report_tables

    dirs, _ = member_folders(tmp_path)
    out = run_stage(tmp_path, dirs)
    (tmp_path / "metrics.json").write_text(json.dumps({"valid_logloss_no_tta": 1.0, "valid_accuracy_no_tta": 0.5,
                                                       "valid_logloss": 0.9, "valid_accuracy": 0.6, "n_aug": 0}))
    (tmp_path / "calibration.json").write_text(json.dumps({"chosen": "tta_mean", "logloss_calibrated": 0.9,
                                                           "accuracy_calibrated": 0.6, "n_rows": 120, "method": "-"}))
    for name, header in (("per_class.csv", "class,logloss"), ("confused.csv", "actual,predicted,n"),
                         ("counts.csv", "class,n")):
        (tmp_path / name).write_text(header + "\n")

    def page(*extra):
        report_tables.main(["--metrics", str(tmp_path / "metrics.json"), "--calibration",
                            str(tmp_path / "calibration.json"), "--per-class", str(tmp_path / "per_class.csv"),
                            "--most-confused", str(tmp_path / "confused.csv"), "--class-counts",
                            str(tmp_path / "counts.csv"), "--out", str(tmp_path / "tables.html"), *extra])
        return (tmp_path / "tables.html").read_text()

    assert "Blend" not in page()
    html = page("--blend", str(out / "weights.json"))
    report = json.loads((out / "weights.json").read_text())
    blend_part = html[html.index("<h2>Blend of the members (out of fold)</h2>"):]
    for text in ("<td>a</td>", "<td>b</td>", "blend (cross-fitted)", f"{report['blend_oof_logloss']:.4f}",
                 f"{report['members'][0]['weight']:.4f}", f"{report['members'][1]['oof_logloss']:.4f}"):
        assert text in blend_part, text
    assert "Pseudo-labels" not in html
    reports = [{"fold": fold, "teacher": "blend", "mode": "threshold", "threshold": 0.9, "n_test": 60,
                "n_used": used, "fraction_used": used / 60, "mean_confidence": 0.95,
                "class_balance": {"one": used - 10, "two": 10}} for fold, used in ((0, 41), (1, 37))]
    for report in reports:
        (tmp_path / f"pseudo_{report['fold']}.json").write_text(json.dumps(report))
    html = page("--blend", str(out / "weights.json"), "--pseudo-labels", *(str(tmp_path / f"pseudo_{fold}.json")
                                                                           for fold in (0, 1)))
    pseudo_part = html[html.index("<h2>Pseudo-labels"):]
    for text in ("<td>41</td>", "<td>37</td>", "one 31, two 10", "one 27, two 10", "<td>0.9000</td>"):
        assert text in pseudo_part, text
