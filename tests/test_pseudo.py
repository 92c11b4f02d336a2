"""The pseudo-label round (issue 21, part 3): fold k's student split holds fold k's rows unchanged plus the test images
fold k's teacher, and only fold k's, labels confidently; pseudo rows only ever train; soft targets reach the loss."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import write_test_table
from pipeline.recipe import defaults as recipe_defaults
from pipeline.compete.blending import combine
from pipeline.data.dataset import read_split, training_targets
from pipeline.train.fit import TensorBatches, train_step
from pipeline.train.loaders import ImageDataset, image_loaders
from pipeline.train.regularise import OFF, BatchMixer, Regularisation, loss
from pipeline.stages import pseudo_labels

CLASSES = ["cat", "dog", "fox"]
N_TEST = 40


@pytest.fixture
def run(tmp_path):
    """A fold split (fold 0 valid), a test.csv with two unreadable images, and two members' test probabilities for
    folds 0 and 1, plus blend weights whose folds differ."""
    labelled = pd.DataFrame({"id": [f"l{i}" for i in range(12)], "label": [CLASSES[i % 3] for i in range(12)]})
    labelled["fold"] = np.arange(12) % 2
    labelled["is_valid"] = labelled["fold"] == 0
    labelled["path"] = "train/" + labelled["id"] + ".jpg"
    split_csv = tmp_path / "split.csv"
    labelled[["id", "label", "is_valid", "path", "fold"]].to_csv(split_csv, index=False)
    test_csv = tmp_path / "test.csv"
    usable = write_test_table(test_csv, N_TEST, unusable=(3, 7))["usable"].to_numpy()
    rng = np.random.default_rng(0)
    probs = {}
    for member in ("a", "b"):
        for fold in (0, 1):
            p = rng.dirichlet([0.3] * 3, N_TEST).astype(np.float32)
            path = tmp_path / member / str(fold) / "test_probs.npy"
            path.parent.mkdir(parents=True)
            np.save(path, p)
            probs[member, fold] = path
    weights = tmp_path / "weights.json"
    weights.write_text(json.dumps({"fold_weights": {"0": [0.8, 0.2], "1": [0.1, 0.9]}, "space": "log_probs"}))
    return {"tmp": tmp_path, "split": split_csv, "test": test_csv, "probs": probs, "weights": weights,
            "usable": usable}


def stage(run, fold=0, teacher="blend", mode="threshold", threshold=0.6, members=("a", "b"), weights=True,
          name="student"):
    out, report = run["tmp"] / name / "split.csv", run["tmp"] / name / "pseudo_labels.json"
    argv = ["--fold-split", str(run["split"]), "--test-csv", str(run["test"]),
            "--teacher-probs", *[str(run["probs"][m, fold]) for m in members],
            *(["--blend-weights", str(run["weights"])] if weights else []),
            "--fold", str(fold), "--out", str(out), "--report", str(report),
            "--params", json.dumps({"teacher": teacher, "mode": mode, "threshold": threshold})]
    pseudo_labels.main(argv)
    return pd.read_csv(out, dtype={"id": str, "label": str}, keep_default_na=False), json.loads(report.read_text())


def expected_used(probs, usable, threshold):
    return np.flatnonzero(usable & (probs.max(1) >= threshold))


def test_fold_k_learns_the_pseudo_labels_of_fold_k_teachers_alone(run):
    split, report = stage(run, fold=0)
    # Fold 1's teachers change completely: fold 0's student split does not move.
    for member in ("a", "b"):
        np.save(run["probs"][member, 1], np.full((N_TEST, 3), 1 / 3, dtype=np.float32))
    again, again_report = stage(run, fold=0, name="again")
    pd.testing.assert_frame_equal(split, again)
    assert report == again_report
    # ... and they are fold 0's blend with fold 0's weights, thresholded.
    member_probs = np.stack([np.load(run["probs"][m, 0]) for m in ("a", "b")])
    teacher = combine(member_probs, np.array([0.8, 0.2]), "log_probs")
    used = expected_used(teacher, run["usable"], 0.6)
    pseudo = split[split["pseudo"]]
    assert pseudo["id"].tolist() == [f"t{i}" for i in used]
    assert pseudo["label"].tolist() == [CLASSES[c] for c in teacher[used].argmax(1)]
    # Fold 1's weights on the same probabilities would label another set: the weights' fold matters.
    other = combine(member_probs, np.array([0.1, 0.9]), "log_probs")
    assert not np.array_equal(expected_used(other, run["usable"], 0.6), used)


def test_a_member_teacher_is_that_members_fold_k_probabilities(run):
    split, report = stage(run, fold=1, teacher="b", members=("b",), weights=False)
    probs = np.load(run["probs"]["b", 1])
    used = expected_used(probs, run["usable"], 0.6)
    assert split.loc[split["pseudo"], "id"].tolist() == [f"t{i}" for i in used]
    assert report["teacher"] == "b" and report["n_used"] == len(used)


def test_pseudo_rows_only_train_and_the_real_rows_are_unchanged(run):
    split, _ = stage(run, fold=0)
    original = pd.read_csv(run["split"], dtype={"id": str, "label": str}, keep_default_na=False)
    real = split[~split["pseudo"]].drop(columns="pseudo").reset_index(drop=True)
    pd.testing.assert_frame_equal(real, original)
    pseudo = split[split["pseudo"]]
    assert len(pseudo) > 0 and not pseudo["is_valid"].any() and (pseudo["fold"] == -1).all()
    assert pseudo["path"].str.startswith("test/").all()
    train, valid, classes = read_split(run["tmp"] / "student" / "split.csv")
    assert classes == CLASSES and not valid["id"].str.startswith("t").any()
    assert valid["id"].tolist() == original.loc[original["is_valid"], "id"].tolist()


def test_the_threshold_filters_by_top_probability_among_usable_images_only(run):
    # Even rows reach 0.75, odd rows stop at 0.5 (both exact in float32); t3 and t7 are unreadable.
    sure, unsure = np.float32([0.125, 0.75, 0.125]), np.float32([0.5, 0.25, 0.25])
    np.save(run["probs"]["a", 0], np.stack([sure if i % 2 == 0 else unsure for i in range(N_TEST)]))
    split, report = stage(run, fold=0, teacher="a", members=("a",), weights=False, threshold=0.75)
    assert split.loc[split["pseudo"], "id"].tolist() == [f"t{i}" for i in range(0, N_TEST, 2)]
    assert report["n_test"] == N_TEST - 2 and report["n_used"] == N_TEST // 2
    assert report["fraction_used"] == pytest.approx((N_TEST // 2) / (N_TEST - 2))
    assert report["class_balance"] == {"cat": 0, "dog": N_TEST // 2, "fox": 0}
    assert report["mean_confidence"] == 0.75 and report["threshold"] == 0.75
    _, everything = stage(run, fold=0, teacher="a", members=("a",), weights=False, threshold=0.5, name="all")
    assert everything["n_used"] == N_TEST - 2  # every readable image, and never t3 or t7
    _, nothing = stage(run, fold=0, teacher="a", members=("a",), weights=False, threshold=0.8, name="none")
    assert nothing["n_used"] == 0 and nothing["mean_confidence"] is None


def test_soft_mode_writes_one_hot_real_rows_and_the_teachers_probabilities_for_pseudo_rows(run):
    split, report = stage(run, fold=0, mode="soft")
    soft = ["soft_0", "soft_1", "soft_2"]
    real, pseudo = split[~split["pseudo"]], split[split["pseudo"]]
    np.testing.assert_array_equal(real[soft].to_numpy(), np.eye(3)[[CLASSES.index(x) for x in real["label"]]])
    teacher = combine(np.stack([np.load(run["probs"][m, 0]) for m in ("a", "b")]), np.array([0.8, 0.2]), "log_probs")
    used = expected_used(teacher, run["usable"], 0.6)
    np.testing.assert_allclose(pseudo[soft].to_numpy(), teacher[used], rtol=1e-12)
    train, valid, _ = read_split(run["tmp"] / "student" / "split.csv")
    targets = training_targets(train)
    assert targets.dtype == np.float32 and targets.shape == (len(train), 3)
    np.testing.assert_allclose(targets[train["pseudo"].to_numpy()], teacher[used], rtol=1e-6)
    assert np.array_equal(targets[~train["pseudo"].to_numpy()].argmax(1), train.loc[~train["pseudo"], "y"])
    assert report["mode"] == "soft"


def test_without_soft_columns_the_training_targets_are_the_integer_labels(run):
    stage(run, fold=0)
    train, _, _ = read_split(run["tmp"] / "student" / "split.csv")
    targets = training_targets(train)
    assert targets.dtype == np.int64 and np.array_equal(targets, train["y"].to_numpy())


@pytest.fixture
def images(tmp_path):
    for index in range(6):
        Image.fromarray(np.full((12, 12, 3), 40 * index, dtype=np.uint8)).save(tmp_path / f"{index}.jpg")
    return tmp_path, [f"{index}.jpg" for index in range(6)]


def test_soft_targets_train_through_the_dataset_and_the_loss(images):
    root, paths = images
    soft = np.random.default_rng(0).dirichlet([1.0] * 3, len(paths)).astype(np.float32)
    frame = pd.DataFrame({"path": paths, "y": soft.argmax(1), **{f"soft_{i}": soft[:, i] for i in range(3)}})
    params = recipe_defaults.complete({"size": 8, "batch_size": 3, "num_workers": 0, "seed": 0},
                                      ("seed", "transforms", "loader"))
    train_loader, valid_loader = image_loaders(frame, frame, root, params, torch.device("cpu"))
    x, y = next(iter(train_loader))
    assert y.dtype == torch.float32 and y.shape == (3, 3)
    assert any(torch.allclose(y[0], torch.from_numpy(row)) for row in soft)
    _, valid_y = next(iter(valid_loader))
    assert valid_y.dtype == torch.int64  # validation scores integer labels
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3), torch.nn.LogSoftmax(-1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step_loss = train_step(model, optimizer, x, y, torch.device("cpu"), amp=False)
    with torch.no_grad():
        expected = -(y * model(x)).sum(1).mean()  # the soft targets' cross-entropy, after the step
        assert np.isfinite(step_loss) and float(loss(model(x), y, 0.0)) == pytest.approx(float(expected), rel=1e-5)
    # On the precomputed activations too: TensorBatches carries the (N, C) targets.
    batches = TensorBatches(torch.randn(6, 4), torch.from_numpy(soft), 3)
    assert [tuple(yb.shape) for _, yb in batches] == [(3, 3), (3, 3)]


def test_hard_labels_give_the_same_items_as_before(images):
    root, paths = images
    labels = pd.Series([0, 2, 1, 0, 1, 2])
    dataset = ImageDataset(root, paths, labels)
    assert dataset.labels.dtype == np.int64 and not dataset.soft
    np.testing.assert_array_equal(dataset.labels, np.asarray(labels, dtype=np.int64))  # the old constructor's array
    assert [dataset[i][1] for i in range(6)] == labels.tolist() and all(type(dataset[i][1]) is int for i in range(6))
    assert ImageDataset(root, paths).labels.tolist() == [-1] * 6
    # and the hard path of the loss is still plain NLL
    log_probs, targets = torch.log_softmax(torch.randn(6, 3), -1), torch.tensor(labels.tolist())
    assert torch.equal(loss(log_probs, targets, 0.0), torch.nn.functional.nll_loss(log_probs, targets))


def test_mixing_soft_targets_fails_naming_pseudo_mode_soft():
    mixer = BatchMixer(Regularisation.from_section({**vars(OFF), "mixup_alpha": 0.4}), n_classes=3)
    with pytest.raises(ValueError, match="pseudo.mode soft"):
        mixer(torch.rand(4, 3, 8, 8), torch.full((4, 3), 1 / 3))


def refused(run, capsys, **kwargs) -> str:
    with pytest.raises(SystemExit):
        stage(run, **kwargs)
    return capsys.readouterr().err


def test_a_blend_teacher_without_weights_is_refused(run, capsys):
    assert "needs --blend-weights" in refused(run, capsys, weights=False)


def test_a_count_mismatch_is_refused_naming_the_files(run, capsys):
    error = refused(run, capsys, members=("a",))
    assert "2 blend weights for 1 teacher files" in error and str(run["probs"]["a", 0]) in error
    error = refused(run, capsys, teacher="a", members=("a", "b"), weights=False)
    assert "one file" in error and str(run["probs"]["b", 0]) in error


def test_weights_without_the_fold_are_refused(run, capsys):
    run["weights"].write_text(json.dumps({"fold_weights": {"1": [0.5, 0.5]}, "space": "probs"}))
    assert "no fold_weights for fold 0" in refused(run, capsys)


def test_probabilities_of_the_wrong_shape_are_refused_naming_the_file(run, capsys):
    np.save(run["probs"]["b", 0], np.full((N_TEST - 1, 3), 1 / 3, dtype=np.float32))
    error = refused(run, capsys)
    assert str(run["probs"]["b", 0]) in error and "shape" in error


def test_a_test_id_that_is_also_labelled_is_refused(run, capsys):
    test = pd.read_csv(run["test"])
    test.loc[5, "id"] = "l4"
    test.to_csv(run["test"], index=False)
    error = refused(run, capsys)
    assert "l4" in error and str(run["test"]) in error
