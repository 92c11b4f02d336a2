import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.predict import passes
from pipeline.recipe import defaults as recipe_defaults
from pipeline.data.dataset import read_labels_csv
from pipeline.predict.inference import tta_log_probs
from pipeline.models.classifier import build_classifier
from pipeline.stages import tta
from pipeline.stages.resize import resize_cache
from pipeline.stages.submission import SubmissionError, make_submission
from pipeline.stages.tta import valid_metrics


@pytest.fixture(scope="module")
def cache(csv_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "resized"
    resize_cache(str(csv_data), str(out), "csv", ".jpg", 32, 90, n_jobs=1)
    return out


def test_tta_returns_a_plain_pass_and_n_aug_augmented_passes(csv_data, cache):
    frame = read_labels_csv(csv_data).head(10).assign(y=0)
    model = build_classifier("resnet18", "none", n_classes=3).eval()
    params = recipe_defaults.complete({"size": 24, "n_aug": 4, "batch_size": 4, "num_workers": 0}, tta.RECIPE_KEYS)
    log_probs = tta_log_probs(model, frame, cache, params, torch.device("cpu"), False, "valid")
    assert log_probs.shape == (5, 10, 3)
    np.testing.assert_allclose(np.exp(log_probs).sum(axis=2), 1.0, rtol=1e-5)
    again = tta_log_probs(model, frame, cache, {**params, "n_aug": 1}, torch.device("cpu"), False, "valid")
    np.testing.assert_allclose(again[0], log_probs[0], rtol=1e-5)  # the plain pass is not augmented
    assert not np.allclose(log_probs[1], log_probs[0])


def test_metrics_report_with_and_without_tta():
    y = np.array([0, 1, 1])
    plain = np.log(np.array([[0.6, 0.4], [0.6, 0.4], [0.2, 0.8]]))
    augmented = np.log(np.array([[0.8, 0.2], [0.2, 0.8], [0.2, 0.8]]))
    kept = passes.from_log_probs(np.stack([plain, augmented]))
    metrics = valid_metrics(kept, y, n_aug=1, n_classes=2)
    assert metrics["valid_accuracy_no_tta"] == pytest.approx(2 / 3)
    assert metrics["valid_accuracy"] == pytest.approx(1.0)  # mean of probabilities: [[.7,.3],[.4,.6],[.2,.8]]
    assert metrics["valid_logloss"] < metrics["valid_logloss_no_tta"]
    np.testing.assert_allclose(passes.tta_mean(kept, n_aug=1)[1], [0.4, 0.6])


def test_passes_keep_the_plain_pass_apart_and_their_weighted_mean_is_fastais():
    rng = np.random.default_rng(0)
    log_probs = np.log(rng.dirichlet(np.ones(4), size=(5, 7)))  # 1 plain + 4 augmented passes, 7 images
    kept = passes.from_log_probs(log_probs)
    np.testing.assert_allclose(kept[passes.PLAIN], np.exp(log_probs[0]))
    np.testing.assert_allclose(passes.tta_mean(kept, n_aug=4), np.exp(log_probs).mean(axis=0))
    without_aug = passes.from_log_probs(log_probs[:1])
    np.testing.assert_allclose(without_aug[passes.AUGMENTED], without_aug[passes.PLAIN])


def test_a_geometric_ensemble_is_renormalised_and_punishes_a_dissenting_member():
    confident = np.array([[0.98, 0.01, 0.01]])
    dissenting = np.array([[0.01, 0.98, 0.01]])
    arithmetic = passes.average([confident, dissenting])
    geometric = passes.average([confident, dissenting], "geometric")
    np.testing.assert_allclose(geometric.sum(axis=1), 1.0)
    np.testing.assert_allclose(arithmetic, [[0.495, 0.495, 0.01]])
    assert geometric[0, 2] > arithmetic[0, 2]  # the class neither member rules out gains relative weight


CLASSES = ["beagle", "pug", "akita"]  # deliberately not sorted


def test_multiclass_submission_follows_sample_order_and_sums_to_one():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    sample = pd.DataFrame({"id": ["b", "a"], "akita": 1 / 3, "beagle": 1 / 3, "pug": 1 / 3})
    submission = make_submission(probs, ["a", "b"], CLASSES, sample, clip=0.05)
    assert list(submission.columns) == ["id", "akita", "beagle", "pug"]
    assert submission["id"].tolist() == ["b", "a"]
    np.testing.assert_allclose(submission.iloc[:, 1:].sum(axis=1), 1.0)
    assert submission.iloc[:, 1:].to_numpy().min() > 0.04  # clipped away from 0, then renormalised
    assert submission.loc[1, "beagle"] > 0.6


def test_without_a_sample_columns_are_sorted_classes_and_ids_in_natural_order():
    probs = np.eye(3)
    submission = make_submission(probs, ["10", "9", "1"], CLASSES, None)
    assert list(submission.columns) == ["id", "akita", "beagle", "pug"]
    assert submission["id"].tolist() == ["1", "9", "10"]


def test_binary_submission_is_the_positive_class_probability():
    probs = np.array([[0.9, 0.1], [0.3, 0.7]])
    submission = make_submission(probs, ["1", "2"], ["cats", "dogs"], None, clip=0.02, positive_class="dogs")
    assert list(submission.columns) == ["id", "label"]
    np.testing.assert_allclose(submission["label"], [0.1, 0.7])
    clipped = make_submission(np.array([[1.0, 0.0]]), ["1"], ["cats", "dogs"], None, 0.02, "dogs")
    assert clipped["label"].item() == pytest.approx(0.02)


def test_a_sample_that_disagrees_fails_loudly():
    probs = np.full((2, 3), 1 / 3)
    wrong_ids = pd.DataFrame({"id": ["a", "c"], "akita": 0, "beagle": 0, "pug": 0})
    with pytest.raises(SubmissionError, match="test ids disagree"):
        make_submission(probs, ["a", "b"], CLASSES, wrong_ids)
    wrong_classes = pd.DataFrame({"id": ["a", "b"], "akita": 0, "beagle": 0, "corgi": 0})
    with pytest.raises(SubmissionError, match="corgi"):
        make_submission(probs, ["a", "b"], CLASSES, wrong_classes)


def test_float32_passes_score_without_scikit_learns_sum_to_one_warning_and_with_the_same_log_loss():
    # What the TTA stage scores: float32 log-softmax outputs, kept as float32 passes. Their rows sum to 1 only to
    # float32 rounding (the demo's: 1.2e-7), past log_loss's float64 tolerance (1.5e-8): it warned on every run.
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(2, 300, 120))
    log_probs = torch.log_softmax(torch.from_numpy(logits).float(), dim=-1).numpy()
    kept = passes.from_log_probs(log_probs).astype(np.float32)
    assert np.abs(kept.astype(np.float64).sum(axis=-1) - 1).max() > 1.5e-8
    y = rng.integers(0, 120, size=300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = valid_metrics(kept, y, n_aug=1, n_classes=120)
    exact = torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()  # the same logits in float64
    assert metrics["valid_logloss_no_tta"] == pytest.approx(-exact[0][np.arange(300), y].mean(), rel=1e-6)
    exact_mean = np.exp(exact).mean(axis=0)
    assert metrics["valid_logloss"] == pytest.approx(-np.log(exact_mean[np.arange(300), y]).mean(), rel=1e-6)
