"""The real workflow, end to end, on tiny recipes for both layouts; then the rerun contract with dry runs."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import log_loss

import report_browser
from conftest import CONFIGS, REPO, copy_workflow, planned_jobs, recipe_for_user_data, restored_afterwards, \
    snakemake, snakemake_command, write_override
from pipeline.models import backbones
from pipeline.predict import passes
from pipeline.workflow import run_lock

pytestmark = pytest.mark.workflow


def scored(submission: pd.DataFrame, solution: pd.DataFrame, classes: list[str]) -> tuple[float, float]:
    merged = solution.merge(submission, on="id", validate="one_to_one")
    probs = merged[classes].to_numpy()
    y = merged["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return log_loss(y, probs, labels=range(len(classes))), float((probs.argmax(1) == y).mean())


def test_csv_layout_writes_the_output_contract(csv_run):
    _, work = csv_run
    out = work / "out"
    split = pd.read_csv(out / "split.csv")
    assert list(split.columns[:3]) == ["id", "label", "is_valid"]
    assert split["is_valid"].sum() == int(0.2 * len(split))
    sizes = pd.read_csv(out / "stats" / "sizes.csv")
    assert list(sizes.columns) == ["id", "split", "width", "height", "mode", "bytes"]
    assert len(sizes) == 360 and (sizes[["width", "height"]].max(axis=1) > 1000).any()
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"valid_accuracy", "valid_logloss", "valid_accuracy_no_tta", "valid_logloss_no_tta"} <= set(metrics)
    for plot in ["plots/sizes_all.png", "plots/sizes_under_1000.png", "plots/augmentations.png", "head/lr_find.png",
                 "head/lr_schedule.png", "head/batch_loss.png", "finetune/1_32/lr_schedule.png",
                 "finetune/1_32/lr_find.png", "finetune/2_40/curves.png", "finetune/2_40/batch_loss.png",
                 "tta/confusion_matrix.png", "interpret/top_losses.png", "interpret/by_class.png"]:
        assert (out / plot).read_bytes()[:4] == b"\x89PNG", plot
    assert np.load(out / "activations" / "32" / "train.npy", mmap_mode="r").shape == ((~split["is_valid"]).sum(), 2560)  # Lite0's 1280 x 2
    log = pd.read_csv(out / "finetune" / "1_32" / "log.csv")
    assert len(log) == 1 + 2  # fit(lr, 2, cycle_len=1, cycle_mult=2)
    assert list(log.columns[:6]) == ["phase", "fit", "epoch", "train_loss", "valid_loss", "accuracy"]


def test_the_calibration_figures_are_the_passes_log_losses_and_the_submitted_probabilities_score_the_lowest(csv_run):
    """Recomputed here from the TTA passes and the labels, not read back: no TTA, fastai's TTA mean, and the
    calibrated probabilities the submission used, each scored on the validation rows."""
    _, work = csv_run
    out = work / "out"
    calibration = json.loads((out / "calibration" / "calibration.json").read_text())
    assert calibration["method"] == "cross-fitted over 5 random parts of the validation set"
    split = pd.read_csv(out / "split.csv")
    valid = split[split["is_valid"]]
    classes = sorted(split["label"].unique())
    y = valid["label"].map(classes.index).to_numpy()
    valid_passes = np.load(out / "tta" / "valid_passes.npy")
    plain, tta_mean = passes.plain(valid_passes), passes.tta_mean(valid_passes, calibration["n_aug"])  # as scored
    submitted = np.load(out / "calibration" / "valid_probs.npy")
    labels = range(len(classes))
    no_tta, tta, calibrated = (log_loss(y, probs, labels=labels) for probs in (plain, tta_mean, submitted))
    assert calibration["logloss_no_tta"] == pytest.approx(no_tta, rel=1e-4)
    assert calibration["logloss_tta"] == pytest.approx(tta, rel=1e-4)
    assert calibration["logloss_calibrated"] == pytest.approx(calibrated, rel=1e-4)
    # The passes are float32 (rows sum to 1 within ~1e-7): two scorings of the same probabilities agree to ~1e-7.
    assert calibrated <= min(no_tta, tta) * (1 + 1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["valid_logloss"] == pytest.approx(tta, rel=1e-4)
    assert metrics["valid_logloss_no_tta"] == pytest.approx(no_tta, rel=1e-4)


def test_csv_submission_covers_every_test_id_once_and_beats_uniform(csv_run):
    _, work = csv_run
    submission = pd.read_csv(work / "out" / "submission.csv", dtype={"id": str})
    sample = pd.read_csv(work / "data" / "sample_submission.csv", dtype={"id": str})
    assert list(submission.columns) == list(sample.columns)
    assert sorted(submission["id"]) == sorted(p.stem for p in (work / "data" / "test").glob("*.jpg"))
    np.testing.assert_allclose(submission.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-4)
    solution = pd.read_csv(work / "data" / "solution.csv", dtype={"id": str})
    loss, accuracy = scored(submission, solution, list(sample.columns[1:]))
    assert loss < math.log(3)
    assert accuracy > 0.5


def test_interpretation_agrees_with_the_probabilities_the_submission_was_calibrated_with(csv_run):
    _, work = csv_run
    out = work / "out"
    split = pd.read_csv(out / "split.csv", dtype={"id": str})
    valid = split[split["is_valid"]]
    classes = sorted(split["label"].unique())
    probs = np.load(out / "calibration" / "valid_probs.npy")
    y = valid["label"].map(classes.index).to_numpy()
    per_class = pd.read_csv(out / "interpret" / "per_class.csv").set_index("label")
    for index, label in enumerate(classes):
        mine = y == index
        assert per_class.at[label, "n"] == mine.sum()
        assert per_class.at[label, "accuracy"] == pytest.approx((probs[mine].argmax(1) == index).mean())
        assert per_class.at[label, "log_loss"] == pytest.approx(-np.log(probs[mine, index]).mean())
    assert per_class["log_loss"].is_monotonic_decreasing
    confused = pd.read_csv(out / "interpret" / "most_confused.csv")
    pairs = pd.crosstab(valid["label"].to_numpy(), np.array(classes)[probs.argmax(1)])
    assert confused["count"].is_monotonic_decreasing
    assert {(row.actual, row.predicted): row.count for row in confused.itertuples()} == {
        (actual, predicted): count for (actual, predicted), count in pairs.stack().items()
        if count and actual != predicted}


@pytest.fixture(scope="module")
def report_page(csv_run, tmp_path_factory):
    """`snakemake --report` of the tiny run, as a browser shows it."""
    workflow, work = csv_run
    page = tmp_path_factory.mktemp("report") / "report.html"
    result = snakemake(workflow, work, "--report", str(page), configfiles=[CONFIGS / "tiny_csv.yaml"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    if report_browser.chromium() is None:
        if os.environ.get("LESSON2_REQUIRE_BROWSER"):
            pytest.fail("Chromium could not be installed for the report check")
        pytest.skip("no Chromium to look at the report with (apt-get install chromium)")
    return page


@pytest.mark.parametrize("clicks, seen", [
    (["1. Data"], ["out/plots/augmentations.png", "out/plots/sizes_all.png", "out/class_counts.csv"]),
    (["2. Training", "size 1_32 (fine-tune)"], ["out/finetune/1_32/lr_find.png", "out/finetune/1_32/batch_loss.png",
                                                "out/finetune/1_32/lr_schedule.png", "out/finetune/1_32/curves.png"]),
    (["2. Training", "head"], ["out/head/lr_find.png", "out/head/batch_loss.png"]),
    (["3. Results", "interpretation"], ["out/interpret/top_losses.png", "out/interpret/most_confused.csv",
                                        "out/interpret/per_class.csv", "out/interpret/by_class.png"]),
    (["3. Results", "validation"], ["out/tta/confusion_matrix.png", "out/metrics.json"]),
    (["3. Results", "tracked runs"], ["out/tracking/runs.html"]),  # the MLflow runs, CV next to the leaderboard
], ids=["data", "fine-tune", "head", "interpretation", "validation", "tracked runs"])
def test_the_report_shows_every_figure_under_its_category_in_a_browser(report_page, clicks, seen):
    dom = report_browser.render(report_page, clicks)
    assert 'data-tour="done"' in dom
    assert all(f">{name}<" in dom for name in seen), [name for name in seen if f">{name}<" not in dom]


def test_the_reports_figures_and_tables_open_in_a_browser(report_page, tmp_path):
    shot = tmp_path / "top_losses.png"
    dom = report_browser.render(report_page, ["3. Results", "interpretation", "view:out/interpret/top_losses.png"],
                                shot)
    assert 'data-tour="done"' in dom and '<img' in dom.split("top_losses.png", 1)[1]
    assert shot.read_bytes()[:4] == b"\x89PNG"
    dom = report_browser.render(report_page, ["3. Results", "tables", "view:out/report/tables.html"])
    assert 'data-tour="done"' in dom and "<iframe" in dom


def test_nothing_reruns_when_nothing_changed(csv_run):
    workflow, work = csv_run
    result = snakemake(workflow, work, "-n", configfiles=[CONFIGS / "tiny_csv.yaml"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Nothing to be done" in result.stdout and planned_jobs(result.stdout) == {}, result.stdout[-2000:]


# The tracking rule logs every run that changed a result: it follows any rerun.
AFTER_CALIBRATE = {"interpret", "report_tables", "submission", "track"}
AFTER_TTA = {"tta", "calibrate"} | AFTER_CALIBRATE
AFTER_THE_HEAD = {"train_head", "lr_find", "finetune"} | AFTER_TTA
FROM_THE_CACHE = {"precompute"} | AFTER_THE_HEAD


@pytest.mark.parametrize("override, expected", [
    ({"tta": {"n_aug": 3}}, AFTER_TTA),
    ({"calibration": {"enabled": False}}, {"calibrate"} | AFTER_CALIBRATE),
    ({"submission": {"clip": 0.01}}, {"submission", "track"}),
    ({"interpret": {"top_losses": 4, "classes": 2}}, {"interpret", "report_tables", "track"}),
    ({"head": {"precomputed": [{"lr": 2.0e-2, "n_cycle": 2}]}}, AFTER_THE_HEAD),
    ({"head": {"lr_find": False}}, AFTER_THE_HEAD),
    ({"train": {"optimizer": "adamw", "train_bn": True}}, AFTER_THE_HEAD),
    ({"head": {"regularise": {"label_smoothing": 0.1, "ema_decay": 0.9}}}, AFTER_THE_HEAD),
    ({"images": {"shorter_side": 48}}, {"resize", "augmentation_preview"} | FROM_THE_CACHE),
    ({"split": {"method": "fastai", "seed": 7}}, {"split"} | FROM_THE_CACHE),
    ({"split": {"method": "stratified_kfold", "n_folds": 3}}, {"split"} | FROM_THE_CACHE),
    # (A key the run does not read, such as `fold` with fastai's split, is refused before planning:
    # tests/test_recipe_checks.py, tests/test_recipe_fuzz.py.)
], ids=["tta.n_aug", "calibration.enabled", "submission.clip", "interpret", "head.precomputed", "head.lr_find",
        "train.optimizer", "head.regularise", "images.shorter_side", "split.seed", "split.method"])
def test_a_parameter_change_reruns_that_stage_and_what_depends_on_it(csv_run, tmp_path, override, expected):
    workflow, work = csv_run
    override_file = write_override(tmp_path / "override.yaml", **override)
    result = snakemake(workflow, work, "-n", configfiles=[CONFIGS / "tiny_csv.yaml", override_file])
    assert set(planned_jobs(result.stdout)) - {"all"} == expected, result.stdout[-2000:] + result.stderr[-2000:]


def test_a_second_fine_tune_size_change_leaves_the_first_alone(csv_run, tmp_path):
    workflow, work = csv_run
    recipe = yaml.safe_load((CONFIGS / "tiny_csv.yaml").read_text())
    recipe["finetune"][1]["fits"][0]["n_cycle"] = 2
    override = write_override(tmp_path / "ft.yaml", finetune=recipe["finetune"])
    jobs = planned_jobs(snakemake(workflow, work, "-n", configfiles=[CONFIGS / "tiny_csv.yaml", override]).stdout)
    assert jobs == {"finetune": 1, "tta": 1, "calibrate": 1, "interpret": 1, "report_tables": 1, "submission": 1,
                    "track": 1, "all": 1}


@pytest.mark.parametrize("size, lr_find, expected", [
    (1, False, {"track": 1, "all": 1}),       # its plot stays; only the tracking rule logs the edited recipe
    (2, True, {"lr_find": 1, "track": 1, "all": 1}),  # the sweep alone: the size's fits do not rerun
], ids=["off", "on"])
def test_turning_a_sizes_lr_find_on_or_off_never_reruns_its_fits(csv_run, tmp_path, size, lr_find, expected):
    workflow, work = csv_run
    recipe = yaml.safe_load((CONFIGS / "tiny_csv.yaml").read_text())
    recipe["finetune"][size - 1]["lr_find"] = lr_find
    override = write_override(tmp_path / "ft.yaml", finetune=recipe["finetune"])
    assert planned_jobs(snakemake(workflow, work, "-n", configfiles=[CONFIGS / "tiny_csv.yaml", override]).stdout) \
        == expected


@pytest.mark.parametrize("module, expected", [
    ("stages/submission.py", {"submission", "track"}),
    ("stages/tta.py", AFTER_TTA),
    # shared modules: exactly the stages that import them (directly or not), and what depends on those
    ("data/transforms.py", {"augmentation_preview"} | FROM_THE_CACHE),
    ("data/dataset.py", {"image_stats", "resize", "split", "augmentation_preview"} | FROM_THE_CACHE),
    # the bundle's parts (predict.py): the prediction math reruns what combines predictions, never training; the
    # bundle's own command line reruns nothing of a plain run (only `package`, which `all` does not ask for)
    ("offline/combine.py", AFTER_TTA),
    ("offline/predictor.py", set()),
], ids=["stages/submission.py", "stages/tta.py", "data/transforms.py", "data/dataset.py", "offline/combine.py",
        "offline/predictor.py"])
def test_editing_a_module_reruns_the_stages_that_import_it_and_their_dependents(csv_run, module, expected):
    workflow, work = csv_run
    with restored_afterwards(workflow / "pipeline" / module) as original:
        (workflow / "pipeline" / module).write_bytes(original + b"\n# an edit\n")
        result = snakemake(workflow, work, "-n", configfiles=[CONFIGS / "tiny_csv.yaml"])
    assert set(planned_jobs(result.stdout)) - {"all"} == expected, result.stdout[-2000:]


def test_folder_layout_gives_a_binary_submission_that_beats_uniform_and_new_weights_rerun_from_precompute(tmp_path):
    """The folder layout's run, with its weights from a local file; then that file replaced at the same path plans
    precompute and everything after it again, and nothing before."""
    workflow = copy_workflow(tmp_path / "repo")
    weights = tmp_path / "my weights" / "lite0.pth"
    weights.parent.mkdir()
    lite0 = backbones.resolve("tf_efficientnet_lite0")
    state = backbones.create(lite0, "packaged").state_dict()
    torch.save(state, weights)
    recipe = [CONFIGS / "tiny_folders.yaml", write_override(tmp_path / "w.yaml", model={
        "arch": "tf_efficientnet_lite0", "weights": str(weights)})]
    result = snakemake(workflow, tmp_path / "work", configfiles=recipe)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data, out = tmp_path / "work" / "data", tmp_path / "work" / "out"
    submission = pd.read_csv(out / "submission.csv", dtype={"id": str})
    assert list(submission.columns) == ["id", "label"]
    assert sorted(submission["id"], key=int) == sorted((p.stem for p in (data / "test").glob("*.jpg")), key=int)
    assert submission["label"].between(0, 1).all()
    split = pd.read_csv(out / "split.csv")
    assert split["is_valid"].tolist() == split["path"].str.startswith("valid/").tolist()
    solution = pd.read_csv(data / "solution.csv", dtype={"id": str})
    merged = solution.merge(submission, on="id")
    y = (merged["label_x"] == "one").to_numpy()
    assert log_loss(y, merged["label_y"], labels=[False, True]) < math.log(2)

    assert planned_jobs(snakemake(workflow, tmp_path / "work", "-n", configfiles=recipe).stdout) == {}
    state["conv_stem.weight"] = state["conv_stem.weight"] * 1.01
    torch.save(state, weights)  # the same path, other weights
    jobs = planned_jobs(snakemake(workflow, tmp_path / "work", "-n", configfiles=recipe).stdout)
    assert set(jobs) - {"all"} == {"precompute"} | AFTER_THE_HEAD - {"lr_find", "track"}, jobs  # tracking: none


# What the check the workflow runs before planning (pipeline.workflow.backbone_check, called by rules/recipe.smk) says about
# each bad arch or weights. Offline, with empty torch and Hugging Face caches.
BAD_BACKBONES = {
    "unknown arch": (("resnet19", "none"), "'resnet19' is neither a torchvision classification model nor a timm "
                                           "model; close names: resnet18"),
    "unknown enum member": (("resnet18", "IMAGENET1K_V9"), "resnet18 has IMAGENET1K_V1"),
    "torchvision offline": (("resnet18", "imagenet"), "hub/checkpoints/resnet18-"),
    "timm offline": (("tf_efficientnet_lite0", "imagenet"), "models--timm--tf_efficientnet_lite0.in1k"),
    "text file": (("tf_efficientnet_lite0", "text"), "is not a torch state dict"),
    "bare tensor": (("tf_efficientnet_lite0", "tensor"), "holds a Tensor, not a state dict"),
    "truncated file": (("tf_efficientnet_lite0", "truncated"), "is not a torch state dict"),
    "another arch's file": (("tf_efficientnet_lite0", "resnet18"), "does not fit tf_efficientnet_lite0"),
    "not an NCHW map": (("swin_t", "none"), "swin_t: its body gives features of shape"),
}
OFFLINE = {"HF_HUB_OFFLINE": "1"}
CHECK_EACH = """
import json, sys
from pipeline.workflow.backbone_check import BackboneProblem, checked_backbone
answers = {}
for case, (arch, weights) in json.loads(sys.argv[1]).items():
    try:
        checked_backbone(arch, weights)
        answers[case] = "no problem"
    except BackboneProblem as problem:
        answers[case] = str(problem)
print(json.dumps(answers))
"""


def bad_weights_file(folder, kind) -> str:
    path = folder / f"{kind}.pth"
    if kind == "text":
        path.write_text("these are not weights")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        torch.save(backbones.create(backbones.resolve("resnet18"), "none").state_dict(), path)
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:100_000])
    return str(path)


def empty_caches(folder) -> dict:
    return {"TORCH_HOME": str(folder / "empty torch home"), "HF_HOME": str(folder / "empty hf home"),
            "XDG_CACHE_HOME": str(folder / "empty cache"), **OFFLINE}


@pytest.fixture(scope="module")
def bad_backbone_answers(tmp_path_factory):
    """Every case checked in one process (one start-up of torch and timm, not one per case)."""
    folder = tmp_path_factory.mktemp("bad_backbones")
    cases = {case: (arch, bad_weights_file(folder, weights) if weights in ("text", "tensor", "truncated", "resnet18")
                    else weights) for case, ((arch, weights), _) in BAD_BACKBONES.items()}
    result = subprocess.run([sys.executable, "-c", CHECK_EACH, json.dumps(cases)], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, **empty_caches(folder)}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("case", list(BAD_BACKBONES))
def test_a_bad_arch_or_weights_is_refused_with_a_message_saying_why(bad_backbone_answers, case):
    assert BAD_BACKBONES[case][1] in bad_backbone_answers[case]


def test_a_bad_backbone_stops_the_workflow_before_any_job_runs(tmp_path):
    bad = write_override(tmp_path / "bad.yaml", model={"arch": "resnet19", "weights": "none"})
    result = snakemake(REPO, tmp_path / "work", configfiles=[CONFIGS / "tiny_csv.yaml", bad],
                       env=empty_caches(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "model: model.arch 'resnet19' is neither" in output, output[-3000:]
    assert "Traceback" not in output and not (tmp_path / "work" / "data").exists()  # no job, not even the demo's


BAD_RECIPES = {
    # Schema errors stop first, each one line: the key and the constraint it breaks.
    "schema": ({"tta": {"n_augg": 3}, "loader": {"batch_size": 0},
                "head": {"size": 32, "precomputed": [{"lr": "1e-2", "n_cycle": 1}]}},
               ["tta: unknown key 'n_augg' (did you mean 'n_aug'?)", "loader.batch_size: must be >= 1 (it is 0)",
                "head.precomputed[0].lr: must be a number or a list of them (it is '1e-2', a string"]),
    # Then everything else the recipe and its data can be checked for (tests/test_recipe_checks.py has each case).
    "after the schema": ({"devices": 3, "data": {"layout": "csv", "positive_class": "tow"},
                          "split": {"method": "fastai", "folds": "all"},
                          "finetune": [{"size": 40, "fits": [{"lr": 1.0e-2, "n_cycle": 1}]},
                                       {"size": 32, "fits": [{"lr": 1.0e-2, "n_cycle": 1}]}]},
                         ["loader.batch_size 16 does not split evenly over devices: 3",
                          "finetune[1].size 32 is smaller than the size before it (40)",
                          "split.folds needs split.method: stratified_kfold",
                          "data.positive_class 'tow' is not one of the classes"]),
}


@pytest.mark.parametrize("case", list(BAD_RECIPES))
def test_a_bad_recipe_stops_before_anything_runs_listing_every_problem(tmp_path, case):
    override, messages = BAD_RECIPES[case]
    bad = write_override(tmp_path / "bad.yaml", **override)
    result = snakemake(REPO, tmp_path, configfiles=[CONFIGS / "tiny_csv.yaml", bad])
    output = result.stdout + result.stderr
    assert result.returncode != 0 and all(message in output for message in messages), output[-3000:]
    assert "Traceback" not in output and "$defs" not in output  # neither our code's stack nor the schema
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


def test_a_header_only_labels_file_and_a_misnamed_sample_stop_before_anything_runs(tmp_path):
    data = tmp_path / "my data"
    for folder in ("train", "test"):
        (data / folder).mkdir(parents=True)
    (data / "labels.csv").write_text("id,breed\n")
    recipe = recipe_for_user_data(CONFIGS / "tiny_csv.yaml", tmp_path / "recipe.yaml", data)
    result = snakemake(REPO, tmp_path / "work", configfiles=[recipe])
    assert result.returncode != 0 and f"{data}/labels.csv: no rows after the header" in result.stderr
    (data / "labels.csv").write_text("id,breed\na,x\nb,y\n")
    for name in "ab":
        (data / "train" / f"{name}.jpg").write_bytes(b"")
    typo = write_override(tmp_path / "typo.yaml", data={"layout": "csv", "sample_submission": "sample_submision.csv"})
    result = snakemake(REPO, tmp_path / "work", configfiles=[recipe, typo])
    assert result.returncode != 0 and f"data.sample_submission: {data}/sample_submision.csv not found" in result.stderr
    assert not (tmp_path / "work" / "out").exists()


@pytest.mark.parametrize("recipes, jobs_per_model", [(["dogbreeds.yaml"], 1), (["dogscats.yaml"], 1),
                                                     (["dogbreeds.yaml", "dogbreeds_kfold.yaml"], 5)])
def test_lesson_recipes_plan_the_whole_chain_without_the_demo_builder(tmp_path, csv_data, folder_data, recipes,
                                                                      jobs_per_model, resnet34_hub):
    data = folder_data if recipes[0] == "dogscats.yaml" else csv_data
    configfiles = [REPO / "config" / recipe for recipe in recipes]
    if recipes[0] == "dogscats.yaml":  # the stand-in data's classes are digits, not cats and dogs
        configfiles.append(write_override(tmp_path / "classes.yaml", data={"layout": "folders",
                                                                           "positive_class": "seven"}))
    result = snakemake(REPO, tmp_path, "-n", "--config", f"data_dir={data}", configfiles=configfiles,
                       env={"TORCH_HOME": str(resnet34_hub)})
    jobs = planned_jobs(result.stdout)
    assert "demo_data" not in jobs, "the demo recipe's keys leaked into a lesson recipe"
    kfold = {"fold_split", "oof"} if jobs_per_model > 1 else set()
    chain = {"split", "image_stats", "resize", "augmentation_preview", "precompute", "train_head", "finetune", "tta",
             "calibrate", "interpret", "report_tables", "submission", "track", "all"}
    assert set(jobs) == chain | kfold, result.stdout[-2000:] + result.stderr[-2000:]
    assert jobs["finetune"] == jobs["precompute"] == jobs["tta"] == jobs_per_model


def test_the_convnext_recipe_plans_its_chain_on_timms_backbone(tmp_path, csv_data, resnet34_hub, convnext_hf_home):
    recipes = [REPO / "config" / "dogbreeds.yaml", REPO / "config" / "dogbreeds_convnext.yaml"]
    result = snakemake(REPO, tmp_path, "-n", "--config", f"data_dir={csv_data}", configfiles=recipes,
                       env={"TORCH_HOME": str(resnet34_hub), "HF_HOME": str(convnext_hf_home), "HF_HUB_OFFLINE": "1"})
    jobs = planned_jobs(result.stdout)
    assert jobs.get("precompute") == 1 and jobs.get("finetune") == 2 and jobs.get("lr_find") == 1, \
        result.stdout[-2000:] + result.stderr[-2000:]


def test_a_lesson_recipe_without_its_data_names_the_missing_files(tmp_path, resnet34_hub):
    result = snakemake(REPO, tmp_path, "-n", configfiles=[REPO / "config" / "dogbreeds.yaml"],
                       env={"TORCH_HOME": str(resnet34_hub)})
    assert result.returncode != 0
    assert "data/dogbreeds/labels.csv" in result.stdout + result.stderr


def test_a_second_run_on_an_out_dir_in_use_stops_at_once_naming_the_first(tmp_path):
    out = tmp_path / "shared out"
    recipe = [CONFIGS / "tiny_csv.yaml", write_override(tmp_path / "out.yaml", out_dir=str(out))]
    first = subprocess.Popen(snakemake_command(REPO, tmp_path / "first", configfiles=recipe), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = out / run_lock.LOCK_NAME
        for _ in range(600):  # the first run takes the lock as its first job starts
            if lock.exists() and f'"pid": {first.pid}' in lock.read_text():
                break
            assert first.poll() is None, "the first run ended before taking the lock"
            time.sleep(0.2)
        second = snakemake(REPO, tmp_path / "second", configfiles=recipe)  # another working directory
        assert second.returncode != 0
        assert f"out_dir {out} is in use by another run (pid {first.pid} on" in second.stderr, second.stderr[-2000:]
        assert not (tmp_path / "second" / "data").exists()  # not even the demo's first job ran
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    run_lock.hold(out).close()  # a killed run leaves no stale lock: the kernel released it


def test_the_out_dir_lock_is_held_until_its_file_closes(tmp_path):
    held = run_lock.hold(tmp_path)
    with pytest.raises(run_lock.OutDirInUse, match=rf"in use by another run \(pid {os.getpid()} on "):
        run_lock.hold(tmp_path)
    held.close()
    run_lock.hold(tmp_path).close()
