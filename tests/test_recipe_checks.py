"""The checks every recipe and its data pass before anything is planned (pipeline/recipe/checks.py), called directly:
each problem names its key, file or row. tests/test_workflow.py checks that the workflow stops on them."""
import copy
from pathlib import Path

import pytest
import yaml

from conftest import CONFIGS, REPO, SCHEMA, with_defaults
from pipeline.models import classifier
from pipeline.recipe import checks as recipe_checks
from pipeline.data.dataset import DataError, read_labels_csv

TINY = yaml.safe_load((CONFIGS / "tiny_csv.yaml").read_text())


def changed(recipe: dict, **sections) -> dict:
    recipe = copy.deepcopy(recipe)
    for section, value in sections.items():
        recipe[section] = {**recipe.get(section, {}), **value} if isinstance(value, dict) else value
    return recipe


# ---- the schema: the failing key and the constraint it breaks, never the schema ------------------------------------

@pytest.mark.parametrize("sections, problem", [
    ({"heda": 1}, "top level: unknown key 'heda' (did you mean 'head'?)"),
    ({"tta": {"n_augg": 3}}, "tta: unknown key 'n_augg' (did you mean 'n_aug'?)"),
    ({"tta": {"n_aug": "4"}}, "tta.n_aug: must be of type integer (it is '4')"),
    ({"loader": {"batch_size": 0}}, "loader.batch_size: must be >= 1 (it is 0)"),
    ({"head": {"size": 24, "precomputed": [{"lr": 0.0, "n_cycle": 1}]}}, "head.precomputed[0].lr: must be > 0 (it is 0.0)"),
    ({"head": {"size": 24, "precomputed": [{"lr": [1.0e-3, -1.0], "n_cycle": 1}]}},
     "head.precomputed[0].lr[1]: must be > 0 (it is -1.0)"),
    ({"head": {"size": 24, "precomputed": [{"lr": "1e-2", "n_cycle": 1}]}},
     "head.precomputed[0].lr: must be a number or a list of them (it is '1e-2', a string: YAML 1.1 reads a "
     "bare 1e-2 as text, write 1.0e-2)"),
    ({"transforms": {"augmentation": "sideon"}}, "transforms.augmentation: must be one of ['side_on', 'top_down', "
                                                 "'basic', 'none'] (it is 'sideon')"),
    ({"model": {"weights": "none"}}, "model: 'arch' is required"),
])
def test_a_schema_error_names_the_key_and_the_constraint_it_breaks(sections, problem):
    recipe = changed(TINY, **sections) if all(key in TINY for key in sections) else {**TINY, **sections}
    if "model" in sections:
        recipe["model"] = sections["model"]
    problems = recipe_checks.schema_problems(recipe, SCHEMA)
    assert len(problems) == 1 and problems[0].startswith(problem), problems
    assert len(problems[0]) < 400  # one line, not the schema


def test_every_shipped_recipe_passes_the_schema():
    for recipe in sorted((REPO / "config").glob("*.yaml")) + sorted((REPO / "tests" / "configs").glob("*.yaml")):
        keys = yaml.safe_load(recipe.read_text())
        if recipe.name == "schema.yaml" or "data_dir" not in keys:  # the schema; add-ons to another recipe
            continue
        assert recipe_checks.schema_problems(keys, SCHEMA) == [], recipe


def test_the_regularised_fragment_changes_only_the_demos_fine_tune_regularisers():
    """config/regularised.yaml restates the demo's fine-tune sizes (a list replaces): only `regularise` may differ."""
    from snakemake.utils import update_config

    demo, fragment = (yaml.safe_load((REPO / "config" / name).read_text())
                      for name in ("demo.yaml", "regularised.yaml"))
    merged = copy.deepcopy(demo)
    update_config(merged, fragment)
    assert recipe_checks.schema_problems(merged, SCHEMA) == []
    assert [{k: v for k, v in step.items() if k != "regularise"} for step in merged["finetune"]] == demo["finetune"]
    assert all(step["regularise"] for step in merged["finetune"])


# ---- progressive sizes and snapshots ----------------------------------------------------------------------------

def finetune(*steps, shorter_side=44):
    return with_defaults(changed(TINY, images={"shorter_side": shorter_side}, finetune=list(steps)))


def fit(n_cycle=1, cycle_len=None):
    return {"lr": 1.0e-2, "n_cycle": n_cycle, "cycle_len": cycle_len}


def test_the_lessons_size_plans_pass():
    assert recipe_checks.finetune_problems(finetune({"size": 32, "fits": [fit()]}, {"size": 40, "fits": [fit()]})) == []
    # the Dog Breed lesson: at 299 the head first with the body frozen, then unfrozen
    frozen_then_unfrozen = finetune({"size": 40, "fits": [fit()]}, {"size": 40, "unfreeze": True, "fits": [fit()]})
    assert recipe_checks.finetune_problems(frozen_then_unfrozen) == []


@pytest.mark.parametrize("steps, problem", [
    ([{"size": 40, "fits": [fit()]}, {"size": 32, "fits": [fit()]}],
     "finetune[1].size 32 is smaller than the size before it (40)"),
    ([{"size": 16, "fits": [fit()]}], "finetune[0].size 16 is smaller than the size before it (32)"),
    ([{"size": 40, "fits": [fit()]}, {"size": 40, "fits": [fit()]}], "finetune: size 40 listed more than once"),
    ([{"size": 40, "unfreeze": True, "fits": [fit()]}, {"size": 40, "unfreeze": True, "fits": [fit()]}],
     "finetune: size 40 listed more than once"),
    ([{"size": 400, "fits": [fit()]}], "finetune[0].size 400 is larger than images.shorter_side 44: every image "
                                       "would be upscaled"),
    ([{"size": 32, "snapshots": 2, "fits": [fit(2, 1)]}, {"size": 40, "fits": [fit()]}],
     "finetune[0].snapshots: 2 on size 32, which is not the last size"),
    ([{"size": 32, "snapshots": 3, "fits": [fit(2, 1)]}], "finetune[0].snapshots: 3 needs a last fit with "
                                                          "cycle_len and at least 3 cycles"),
])
def test_a_size_plan_that_cannot_be_what_was_meant_is_refused(steps, problem):
    problems = recipe_checks.finetune_problems(finetune(*steps))
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_bn_freeze_and_train_bn_together_are_refused():
    recipe = with_defaults(changed(TINY, train={"train_bn": True},
                                   finetune=[{"size": 32, "unfreeze": True, "bn_freeze": True, "fits": [fit()]}]))
    assert recipe_checks.finetune_problems(recipe) == [
        "finetune[0].bn_freeze keeps the body's BatchNorm statistics as pretrained, while train.train_bn trains "
        "them: choose one"]


@pytest.mark.parametrize("arch", ["resnet18", "resnet10t"])  # torchvision's; timm's ResNet built without DropPath
def test_drop_path_is_refused_by_key_for_a_built_body_without_drop_path_layers(arch):
    recipe = with_defaults(changed(TINY, model={"arch": arch}, head={"regularise": {"drop_path": 0.1}},
                                   finetune=[{"size": 32, "fits": [fit()], "regularise": {"drop_path": 0.2}},
                                             {"size": 40, "fits": [fit()]}]))
    problems = recipe_checks.regularise_problems(recipe, classifier.describe(arch, "none"))
    assert [problem.split(":")[0] for problem in problems] == ["head.regularise.drop_path",
                                                               "finetune[0].regularise.drop_path"]
    assert f"{arch} (" in problems[0] and "has none" in problems[0]
    lite0 = classifier.describe("efficientnet_lite0", "none")
    assert lite0["drop_path_blocks"] == 16
    assert recipe_checks.regularise_problems(changed(recipe, model={"arch": "efficientnet_lite0"}), lite0) == []


def test_the_head_size_past_the_resize_cache_is_refused():
    recipe = with_defaults(changed(TINY, images={"shorter_side": 30}))
    assert any(p.startswith("head.size 32 is larger than images.shorter_side 30")
               for p in recipe_checks.finetune_problems(recipe))


# ---- the data: labels, classes, sample_submission, positive_class ---------------------------------------------------

def user_data(folder: Path, labels: str, sample: str | None = None) -> dict:
    """A csv-layout data set with the given labels.csv (an image per row) and sample_submission.csv, and a recipe."""
    (folder / "train").mkdir(parents=True)
    (folder / "test").mkdir()
    (folder / "labels.csv").write_text(labels)
    for line in labels.splitlines()[1:]:  # stand-ins: the checks read no pixels, but refuse a zero-byte file
        (folder / "train" / f"{line.split(',')[0]}.jpg").write_bytes(b"\xff\xd8")
    if sample is not None:
        (folder / "sample_submission.csv").write_text(sample)
    recipe = {key: value for key, value in TINY.items() if key != "demo"}
    return with_defaults({**recipe, "data_dir": str(folder)})


@pytest.mark.parametrize("labels, problem", [
    ("", "labels.csv: the file is empty"),
    ("id,breed\n", "labels.csv: no rows after the header"),
    ("id,breed\na,uno\nb,uno\n", "only one class (uno); a classifier needs at least two"),
])
def test_labels_a_classifier_cannot_learn_from_are_refused(tmp_path, labels, problem):
    problems = recipe_checks.data_problems(user_data(tmp_path / "data", labels), sample_named=False)
    assert len(problems) == 1 and problem in problems[0], problems
    assert str(tmp_path / "data") in problems[0]


def test_the_split_stage_refuses_an_empty_or_header_only_labels_file_too(tmp_path):
    for text, message in [("", "the file is empty"), ("id,breed\n", "no rows after the header")]:
        (tmp_path / "labels.csv").write_text(text)
        with pytest.raises(DataError, match=message):
            read_labels_csv(tmp_path)


LABELS = "id,breed\na,one\nb,two\nc,one\n"


@pytest.mark.parametrize("sample, positive, named, problem", [
    ("id,one,two\nt,0.5,0.5\n", None, False, None),
    (None, None, False, None),
    (None, None, True, "data.sample_submission: {data}/sample_submission.csv not found (the recipe names it"),
    ("id,uno,two\nt,0.5,0.5\n", None, False,
     "{data}/sample_submission.csv: its classes disagree with the labels: missing from the labels ['uno'], not in "
     "the sample ['one']"),
    ("id,label\nt,0.5\n", None, False, "set data.positive_class"),
    ("id,label\nt,0.5\n", "one", False, None),
    ("id,label\nt,0.5\n", "onw", False, "data.positive_class 'onw' is not one of the classes ['one', 'two'] "
                                       "(did you mean 'one'?)"),
    ("id,one,two\nt,0.5,0.5\n", "one", False, "a binary submission (positive_class set) needs columns id,label"),
])
def test_the_sample_submission_and_positive_class_must_fit_the_labels(tmp_path, sample, positive, named, problem):
    data = tmp_path / "data"
    recipe = user_data(data, LABELS, sample)
    recipe["data"]["positive_class"] = positive
    problems = recipe_checks.data_problems(recipe, sample_named=named)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem.format(data=data) in problems[0], problems


def test_a_demo_recipes_positive_class_is_checked_against_the_classes_it_builds():
    recipe = with_defaults(changed(TINY, data={"positive_class": "tow"}))
    assert recipe_checks.data_problems(recipe, sample_named=False) == [
        "data.positive_class 'tow' is not one of the classes ['zero', 'one', 'two'] (did you mean 'two'?)"]


def test_an_out_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("")
    problems = recipe_checks.out_dir_problems({"out_dir": str(tmp_path / "out")})
    assert problems == [f"out_dir {tmp_path / 'out'} is a file, not a folder; give the recipe a folder for its outputs"]


# ---- K-fold and data-parallel settings ---------------------------------------------------------------------------

@pytest.mark.parametrize("split, problem", [
    ({"method": "fastai", "folds": "all"}, "split.folds needs split.method: stratified_kfold"),
    ({"method": "stratified_kfold", "n_folds": 3, "folds": [0, 3]}, "split.folds [3] out of range: n_folds is 3"),
])
def test_a_kfold_recipe_that_cannot_run_is_refused(split, problem):
    folds, problems = recipe_checks.kfold_folds(with_defaults(changed(TINY, split=split)))
    assert folds == [] and len(problems) == 1 and problems[0].startswith(problem), problems


def test_a_fold_listed_twice_breaks_the_schema():
    recipe = changed(TINY, split={"method": "stratified_kfold", "n_folds": 3, "folds": [0, 0]})
    assert recipe_checks.schema_problems(recipe, SCHEMA) == ["split.folds: must not repeat an item (it is [0, 0])"]


def test_the_folds_a_kfold_recipe_runs():
    recipe = with_defaults(changed(TINY, split={"method": "stratified_kfold", "n_folds": 3, "folds": [2, 0]}))
    assert recipe_checks.kfold_folds(recipe) == ([0, 2], [])
    assert recipe_checks.kfold_folds(with_defaults(TINY)) == ([], [])


@pytest.mark.parametrize("sections, problem", [
    ({"device": "cuda:1", "devices": 2}, "devices: 2 needs device auto or cuda"),
    ({"devices": 3}, "loader.batch_size 16 does not split evenly over devices: 3"),
])
def test_a_recipe_data_parallel_training_cannot_run_is_refused(sections, problem):
    problems = recipe_checks.runtime_problems(with_defaults({**TINY, **sections}))
    assert len(problems) == 1 and problems[0].startswith(problem), problems


# ---- Slurm requests against the cluster's nodes (the real cluster: tests/test_slurm.py) ---------------------------

def test_a_slurm_request_larger_than_every_node_of_its_partition_is_named():
    from pipeline.workflow.slurm_check import Request, partitions, request_problems

    largest, default = partitions("main*|2|3000\nmain*|4|2000\ngpu|32|256000+\n")
    assert largest == {"main": (4, 3000), "gpu": (32, 256000)} and default == "main"
    requests = [Request("resize", None, 16, 8000), Request("tta", "gpu", 8, 16000), Request("split", "big", 1, None)]
    assert request_problems(requests, largest, default) == [
        "rule resize asks for 16 CPUs; the largest node of partition main has 4 (pass --max-threads 4, or "
        "--set-threads resize=4)",
        "rule resize asks for 8000 MB of memory; the largest node of partition main has 3000 MB (pass "
        "--set-resources resize:mem_mb=3000)",
        "rule split: partition 'big' is not one of this cluster's (gpu, main)"]


# ---- labels that read as missing values, zero-byte images (issue 33) -------------------------------------------------

@pytest.mark.parametrize("label", ["NaN", "NA", "N/A", "null", "None", "nan", "#N/A"])
def test_a_label_that_reads_as_a_missing_value_stops_planning_naming_its_line(tmp_path, label):
    data = tmp_path / "data"
    problems = recipe_checks.data_problems(user_data(data, f"id,breed\na,one\nb,{label}\nc,two\n"), sample_named=False)
    assert problems == [f"{data}/labels.csv line 3: the label {label!r} of id 'b' reads as a missing value (pandas "
                        "and most CSV readers take it for an empty cell), so it would become a class of its own; give "
                        "the image its class, or drop the row (a class really named so must be a column of the sample "
                        "submission)"]


def test_a_class_named_nan_is_a_class_when_the_sample_submission_names_it(tmp_path):
    labels = "id,breed\na,one\nb,NaN\nc,NaN\n"
    assert recipe_checks.data_problems(user_data(tmp_path / "named", labels, "id,NaN,one\nt,0.5,0.5\n"),
                                       sample_named=False) == []
    problems = recipe_checks.data_problems(user_data(tmp_path / "other", labels, "id,one,two\nt,0.5,0.5\n"),
                                           sample_named=False)
    assert len(problems) == 1 and "labels.csv line 3: the label 'NaN' of id 'b' reads as a missing value" in problems[0]


def empty_images_data(folder: Path, on_bad_image: str = "error") -> dict:
    """A csv data set with one zero-byte labelled image, one zero-byte test image and a zero-byte unlabelled file."""
    recipe = user_data(folder, LABELS)
    for path in ("train/b.jpg", "test/t2.jpg", "train/stray.jpg"):
        (folder / path).write_bytes(b"")
    (folder / "test" / "t1.jpg").write_bytes(b"\xff\xd8")
    recipe["images"]["on_bad_image"] = on_bad_image
    return recipe


def test_zero_byte_images_stop_planning_listing_them_and_saying_what_to_do(tmp_path):
    data = tmp_path / "data"
    problems = recipe_checks.data_problems(empty_images_data(data), sample_named=False)
    # train/stray.jpg has no label: no stage reads it, so it is no problem (the split stage lists it as skipped)
    assert problems == [f"{data}: 2 empty image files (0 bytes), which no stage can read: train/b.jpg, "
                        "test/t2.jpg; replace or remove them, or set images.on_bad_image: skip to leave them out (an "
                        "empty test image then keeps its row in the submission, with the training class prior)"]


def test_with_on_bad_image_skip_zero_byte_images_are_left_to_the_image_stats_stage(tmp_path):
    assert recipe_checks.data_problems(empty_images_data(tmp_path / "data", "skip"), sample_named=False) == []


def test_many_zero_byte_images_are_summarised_and_the_folder_layouts_valid_images_count(tmp_path):
    for split, n in (("train", 3), ("valid", 25)):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            for index in range(n):
                (tmp_path / split / label / f"{split}{label}{index}.jpg").write_bytes(b"" if split == "valid" else b"x")
    recipe = with_defaults({**{key: value for key, value in TINY.items() if key != "demo"}, "data_dir": str(tmp_path),
                            "data": {"layout": "folders"}})
    problems = recipe_checks.data_problems(recipe, sample_named=False)
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path}: 50 empty image files (0 bytes)")
    assert "valid/cat/validcat0.jpg" in problems[0] and ", ... (30 more); replace or remove them" in problems[0]


def test_the_check_reads_the_data_scan_it_is_given_instead_of_scanning_again(tmp_path):
    from pipeline.data.dataset import DataScan, data_fingerprint, scan_data

    recipe = user_data(tmp_path / "data", LABELS)
    scan = scan_data(tmp_path / "data")
    assert scan.fingerprint == data_fingerprint(tmp_path / "data") and scan.empty_files == frozenset()
    problems = recipe_checks.data_problems(recipe, False, DataScan(scan.fingerprint, frozenset({"train/c.jpg"})))
    assert len(problems) == 1 and "1 empty image file (0 bytes), which no stage can read: train/c.jpg;" in problems[0]


def test_a_demo_recipe_has_no_data_to_scan_before_its_first_job(tmp_path):
    recipe = with_defaults({**TINY, "data_dir": str(tmp_path / "not built yet")})
    assert recipe_checks.data_problems(recipe, sample_named=False) == []


def test_a_key_written_twice_is_refused_naming_the_file_the_key_and_both_lines(tmp_path):
    from pipeline.recipe import files
    recipe = tmp_path / "blend.yaml"
    recipe.write_text("members:\n  lite0: {}\n  lite0_s7: {seed: 7}\n  lite0: {seed: 3}\n")
    assert files.problems([recipe]) == [
        f"{recipe} line 4: key 'lite0' is written twice in one mapping (first on line 2); YAML would silently keep "
        "only the last one: remove or rename one of them"]
    recipe.write_text("base: &fit {lr: 1.0e-3, n_cycle: 1}\nhead:\n  augmented:\n    - <<: *fit\n      lr: 2.0e-3\n")
    assert files.problems([recipe]) == []  # a merge key's override is meant
    recipe.write_text("head: [1\n")
    assert files.problems([recipe])[0].startswith(f"{recipe} line 2: not valid YAML")


@pytest.mark.parametrize("section, base, problem", [
    ({"blend": {"method": "weights"}}, "tiny_csv", "blend: written, but this run would ignore the whole section: "
     "only a K-fold recipe (split.folds) with `members` runs the blend stage"),
    ({"ensemble": {"average": "geometric"}}, "tiny_csv", "ensemble: written, but this run would ignore the whole "
     "section: only a K-fold run (split.folds) runs the oof stage"),
    ({"split": {"method": "fastai", "n_folds": 3}}, "tiny_csv", "split.n_folds: written, but this run would ignore "
     "it: it is read only when split.method is 'stratified_kfold' (here 'fastai')"),
    ({"split": {"method": "stratified_kfold", "n_folds": 3, "folds": "all", "fold": 1}}, "tiny_csv",
     "split.fold: written, but this run would ignore it: a K-fold run (split.folds) trains every fold it lists"),
    ({"split": {"method": "stratified_kfold", "val_pct": 0.3}}, "tiny_csv", "split.val_pct: written, but this run "
     "would ignore it: it is read only when split.method is 'fastai'"),
])
def test_a_key_the_run_would_not_read_is_refused_and_a_default_never_is(section, base, problem):
    from pipeline.workflow.unused_keys import unused_problems
    as_written = changed(yaml.safe_load((CONFIGS / f"{base}.yaml").read_text()), **section)
    problems = unused_problems(as_written, with_defaults(as_written))
    assert len(problems) == 1 and problems[0].startswith(problem), problems
    assert unused_problems(TINY, with_defaults(TINY)) == []  # the schema fills blend: {} and ensemble: {} itself


def test_the_whole_check_stops_in_order_naming_the_file_behind_each_key(tmp_path, monkeypatch):
    """pseudo without members used to reach the student's lookup (an IndexError) before its check."""
    from pipeline.workflow import recipe_check
    monkeypatch.chdir(tmp_path)
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    fragment = {"pseudo": {}, "tta": {"n_aug": 0}}
    with pytest.raises(recipe_check.RecipeRefused) as refused:
        recipe_check.checked({**demo, **fragment}, [("config/demo.yaml", demo), ("mine.yaml", fragment)])
    assert refused.value.problems == [
        "mine.yaml: pseudo: written, but this run would ignore the whole section: only a K-fold recipe (split.folds) with `members` runs "
        "the pseudo_labels stage that reads it; remove it"]
    checked = recipe_check.checked(demo, [("config/demo.yaml", demo)])
    assert checked.recipe["blend"] == {"method": "weights", "space": "probs", "stacker_c": 1.0}  # the defaults
    assert checked.folds == [] and checked.backbone["drop_path_blocks"] == 16 and checked.chains == {}
