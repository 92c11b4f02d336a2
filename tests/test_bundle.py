"""The offline bundle (`snakemake package`): deterministic TTA views computed once for the pipeline and the bundle,
then the suite's single-split, K-fold and blend runs packaged, each bundle's predict.py run in a fresh virtual
environment that holds only its requirements (no torch), and its submission held to the run's own."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.linear_model import LogisticRegression

from conftest import CONFIGS, REPO, checksums, snakemake, with_defaults, write_override
from pipeline.compete import bundle
from pipeline.offline import images as offline
from pipeline.offline import combine as offline_combine
from pipeline.offline import predictor as offline_predict
from pipeline.recipe import checks as recipe_checks
from pipeline.data.resizing import resize_one

workflow = pytest.mark.workflow
BLEND_RECIPES = [CONFIGS / name for name in ("kfold_csv.yaml", "blend_csv.yaml", "pseudo_csv.yaml")]


def test_the_plain_view_comes_first_and_views_flip_only_where_the_augmentation_allows():
    side_on, basic = offline.tta_views("side_on", 1.1), offline.tta_views("basic", 1.1)
    assert side_on[0] == basic[0] == {"zoom": 1.0, "crop": "center", "symmetry": "identity"}
    assert len(side_on) == 12 and len(basic) == 6 and len(offline.tta_views("top_down", 1.1)) == 48
    assert {view["symmetry"] for view in basic} == {"identity"}
    assert side_on[1] == {"zoom": 1.0, "crop": "center", "symmetry": "flip"}  # the plain crop's mirror first
    assert offline.tta_views("none", 1.0) == [basic[0]]  # nothing to vary: the plain view alone


def test_a_view_is_the_crop_of_the_resized_image_and_its_flip_mirrors_the_same_pixels():
    pixels = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    plain = offline.view(image, 40, "bilinear", {"zoom": 1.0, "crop": "center", "symmetry": "identity"})
    resized = np.asarray(image.resize((64, 40), Image.BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(plain, resized[:, :, 12:52])  # shorter side 40, centred 40 x 40
    corner = offline.view(image, 40, "bilinear", {"zoom": 1.1, "crop": "bottom_right", "symmetry": "flip"})
    zoomed = np.asarray(image.resize((70, 44), Image.BILINEAR)).transpose(2, 0, 1)
    # the corner of the zoomed centre square (44 x 44 from column 13), not of the whole 70 px wide image
    np.testing.assert_array_equal(corner, zoomed[:, 4:44, 17:57][:, :, ::-1])


def test_the_bundle_sees_a_test_image_as_the_pipelines_resize_cache_holds_it(csv_data, tmp_path):
    rule = {"shorter_side": 44, "jpeg_quality": 90, "jpeg_draft": True}
    for source in sorted((csv_data / "test").iterdir())[:4]:
        resize_one(source, tmp_path / source.name, rule["shorter_side"], rule["jpeg_quality"], rule["jpeg_draft"])
        np.testing.assert_array_equal(np.asarray(offline.as_cached(source, rule)),
                                      np.asarray(offline.load_rgb(tmp_path / source.name)))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_the_stacker_applied_from_its_coefficients_is_scikit_learns(n_classes):
    """The bundle applies the stacker from its coefficients, with no scikit-learn: binary and multinomial alike."""
    rng = np.random.default_rng(1)
    member_probs = rng.dirichlet(np.ones(n_classes), size=(2, 40))
    fitted = LogisticRegression().fit(offline_combine.stacker_features(member_probs), rng.integers(0, n_classes, 40))
    coefficients = {"coef": fitted.coef_.tolist(), "intercept": fitted.intercept_.tolist(),
                    "classes": fitted.classes_.tolist()}
    np.testing.assert_allclose(offline_combine.stacked(member_probs, coefficients, n_classes),
                               fitted.predict_proba(offline_combine.stacker_features(member_probs)), atol=1e-12)


def test_deterministic_tta_refuses_more_passes_than_it_has_views():
    recipe = with_defaults({**yaml.safe_load((CONFIGS / "tiny_csv.yaml").read_text()), "tta": {
        "n_aug": 6, "mode": "deterministic"}})
    assert recipe_checks.tta_problems(recipe) == [
        "tta.n_aug 6 with tta.mode deterministic: transforms.augmentation basic and max_zoom 1.1 give 5 views besides "
        "the plain one; lower n_aug, raise max_zoom above 1, or use an augmentation with flips (side_on, top_down)"]
    recipe["tta"]["n_aug"] = 5
    assert recipe_checks.tta_problems(recipe) == []


# --- The suite's runs, packaged ---

def package(workflow: Path, work: Path, recipes: list[Path], *args: str) -> Path:
    result = snakemake(workflow, work, "package", *args, configfiles=recipes)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work / "out" / "package"


def fresh_venv(folder: Path, *install: str) -> Path:
    """A new virtual environment with only `install` pip-installed: no torch, nothing of this project."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *install], check=True, timeout=600)
    return python


def predict_offline(python: Path, bundle_dir: Path, work: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    """The bundle's predict.py on the run's own test folder, as a notebook would run it."""
    return subprocess.run([str(python), str(bundle_dir / "predict.py"), str(work / "data" / "test"), "--out", str(out),
                           "--sample", str(work / "data" / "sample_submission.csv"), "--threads", "1",
                           "--workers", "1", *args], capture_output=True, text=True, timeout=600)


def assert_reproduces(written: Path, work: Path) -> dict:
    found = bundle.compare_submissions(written, work / "out" / "submission.csv")
    assert bundle.parity_problem({**found, "tolerance": 1e-4}) is None, found
    return found


@pytest.fixture(scope="session")
def csv_bundle(csv_run, tmp_path_factory) -> tuple[Path, Path]:
    """The single-split run's bundle with its wheels and int8 models: (the bundle, the run's working directory).
    The package job reads data_dir (test images, training images for int8): it must leave every byte there as it was."""
    workflow, work = csv_run
    options = write_override(tmp_path_factory.mktemp("package") / "package.yaml",
                             package={"wheels": True, "quantize": "int8"})
    before = checksums(work / "data")
    folder = package(workflow, work, [CONFIGS / "tiny_csv.yaml", options])
    assert checksums(work / "data") == before
    return folder, work


@pytest.fixture(scope="session")
def pypi_venv(tmp_path_factory) -> Path:
    """A fresh venv with the bundles' requirements from the package index (every bundle of this suite pins the same)."""
    requirements = tmp_path_factory.mktemp("requirements") / "requirements.txt"
    requirements.write_text(bundle.requirements())
    return fresh_venv(tmp_path_factory.mktemp("venv") / "venv", "-r", str(requirements))


@workflow
def test_the_single_split_bundle_installs_from_its_wheels_and_writes_the_runs_submission_without_torch(csv_bundle,
                                                                                                       tmp_path):
    folder, work = csv_bundle
    assert sorted(path.name for path in folder.iterdir() if not path.name.startswith(".")) == [
        "README.md", "manifest.json", "models", "predict.py", "requirements.txt", "wheels"]
    python = fresh_venv(tmp_path / "venv", "--no-index", "--find-links", str(folder / "wheels"),
                        "-r", str(folder / "requirements.txt"))
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert "No module named 'torch'" in no_torch.stderr
    result = predict_offline(python, folder, work, tmp_path / "submission.csv")
    assert result.returncode == 0, result.stderr
    assert_reproduces(tmp_path / "submission.csv", work)
    assert "images/s; 10,000 images would take about" in result.stdout
    # Nothing in the bundle is a pickle: ONNX models, everything else JSON or text (and the wheels).
    import onnx

    for model in (folder / "models").iterdir():
        onnx.checker.check_model(onnx.load(model))
    assert {path.suffix for path in folder.rglob("*") if path.is_file() and path.parent.name != "wheels"} <= {
        ".onnx", ".json", ".py", ".txt", ".md", ""}


@workflow
def test_the_int8_models_log_loss_and_speed_are_measured_against_fp32_and_they_run_offline(csv_bundle, tmp_path):
    folder, work = csv_bundle
    manifest = json.loads((folder / "manifest.json").read_text())
    int8 = manifest["int8"]
    assert int8["scope"] == "validation" and 0 < int8["fp32_logloss"] < 2 and 0 < int8["int8_logloss"] < 3
    assert int8["int8_images_per_s"] > 0 and int8["fp32_images_per_s"] > 0
    assert manifest["checked_against_run"]["max_difference"] <= 1e-4
    offline_predict.main([str(work / "data" / "test"), "--out", str(tmp_path / "int8.csv"), "--models", "int8",
                          "--sample", str(work / "data" / "sample_submission.csv"), "--bundle", str(folder),
                          "--threads", "1", "--workers", "1"])
    found = bundle.compare_submissions(tmp_path / "int8.csv", work / "out" / "submission.csv")
    assert found["same_ids"] and found["same_columns"]
    assert found["max_difference"] > 1e-4  # the int8 files ran: their probabilities are not the fp32 models'


@workflow
def test_the_kfold_bundle_averages_every_folds_snapshots_as_the_run_did(kfold_run, pypi_venv, tmp_path):
    folder = package(REPO, kfold_run, [CONFIGS / "kfold_csv.yaml"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [len(fold["models"]) for fold in manifest["members"][0]["folds"]] == [3, 3, 3]  # 2 snapshots + final
    assert (folder / "requirements.txt").read_text() == bundle.requirements()
    result = predict_offline(pypi_venv, folder, kfold_run, tmp_path / "submission.csv")
    assert result.returncode == 0, result.stderr
    assert_reproduces(tmp_path / "submission.csv", kfold_run)


@pytest.fixture(scope="session")
def blend_bundle(blend_run) -> Path:
    return package(REPO, blend_run, BLEND_RECIPES)


@workflow
def test_the_blend_bundle_blends_members_and_students_folds_and_calibrates_as_the_run_did(blend_run, blend_bundle,
                                                                                       pypi_venv, tmp_path):
    manifest = json.loads((blend_bundle / "manifest.json").read_text())
    assert [member["name"] for member in manifest["members"]] == ["a", "b", "a-pseudo"]
    weights = json.loads((blend_run / "out" / "blend_pseudo" / "weights.json").read_text())
    assert manifest["blend"]["weights"] == [member["weight"] for member in weights["members"]]
    result = predict_offline(pypi_venv, blend_bundle, blend_run, tmp_path / "submission.csv")
    assert result.returncode == 0, result.stderr
    assert_reproduces(tmp_path / "submission.csv", blend_run)


def break_blend_weights(manifest):
    manifest["blend"]["weights"] = [1.0] + [0.0] * (len(manifest["blend"]["weights"]) - 1)


def break_temperature(manifest):
    manifest["calibration"]["temperature"] *= 1.5


def leave_out_a_fold(manifest):
    for member in manifest["members"]:
        member["folds"] = member["folds"][:-1]


def move_the_crop(manifest):
    for member in manifest["members"]:  # the plain view: the top-left corner of a zoom instead of the centre crop
        member["input"]["views"][0].update(zoom=1.1, crop="top_left")


@workflow
@pytest.mark.parametrize("breaking", [break_blend_weights, break_temperature, leave_out_a_fold, move_the_crop])
def test_the_parity_check_fails_when_one_step_of_the_bundle_is_broken(blend_run, blend_bundle, tmp_path, breaking):
    broken = tmp_path / "bundle"
    shutil.copytree(blend_bundle, broken, ignore=shutil.ignore_patterns("wheels"))
    manifest = json.loads((broken / "manifest.json").read_text())
    breaking(manifest)
    (broken / "manifest.json").write_text(json.dumps(manifest))
    offline_predict.main([str(blend_run / "data" / "test"), "--out", str(tmp_path / "broken.csv"),
                          "--bundle", str(broken), "--sample", str(blend_run / "data" / "sample_submission.csv"),
                          "--threads", "1", "--workers", "1"])
    found = bundle.compare_submissions(tmp_path / "broken.csv", blend_run / "out" / "submission.csv")
    assert bundle.parity_problem({**found, "tolerance": 1e-4}) is not None


# --- Bad input: one line naming the file or argument, or a logged skip ---

@pytest.fixture
def bundle_copy(csv_bundle, tmp_path) -> Path:
    folder, _ = csv_bundle
    shutil.copytree(folder, tmp_path / "bundle", ignore=shutil.ignore_patterns("wheels"))
    return tmp_path / "bundle"


def run_offline(capsys, *args: str) -> tuple[int, str, str]:
    try:
        offline_predict.main([*args, "--threads", "1", "--workers", "1"])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@workflow
def test_an_unreadable_or_empty_test_image_gets_the_class_prior_and_one_line_naming_it(csv_bundle, bundle_copy,
                                                                                        tmp_path, capsys):
    _, work = csv_bundle
    test_dir = tmp_path / "test"
    shutil.copytree(work / "data" / "test", test_dir)
    (test_dir / "empty.jpg").write_bytes(b"")
    (test_dir / "broken.png").write_bytes(b"not an image at all")
    code, out, _ = run_offline(capsys, str(test_dir), "--out", str(tmp_path / "s.csv"), "--bundle", str(bundle_copy))
    assert code == 0
    warned = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 2 and any("empty.jpg" in line for line in warned) and any("broken.png" in line
                                                                                   for line in warned)
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    rows = {line.split(",")[0]: np.array(line.split(",")[1:], dtype=float)
            for line in (tmp_path / "s.csv").read_text().splitlines()[1:]}
    prior = dict(zip(manifest["classes"], manifest["members"][0]["folds"][0]["prior"]))
    np.testing.assert_allclose(rows["empty"], [prior[name] for name in manifest["submission"]["columns"]], atol=1e-9)


def remove_the_model(folder):
    (folder / "models" / "model.onnx").unlink()


def damage_the_model(folder):
    with open(folder / "models" / "model.onnx", "ab") as file:
        file.write(b"\0")


def newer_manifest(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "bundle_version": 99}))


@workflow
@pytest.mark.parametrize("spoil, named", [
    (remove_the_model, "model.onnx: model file missing from the bundle"),
    (damage_the_model, "model.onnx: checksum differs from manifest.json's"),
    (newer_manifest, "manifest.json: bundle version 99 is newer than this predict.py reads"),
])
def test_a_missing_damaged_or_newer_bundle_stops_with_one_line_naming_the_file(csv_bundle, bundle_copy, tmp_path,
                                                                               capsys, spoil, named):
    _, work = csv_bundle
    spoil(bundle_copy)
    code, _, err = run_offline(capsys, str(work / "data" / "test"), "--out", str(tmp_path / "s.csv"),
                               "--bundle", str(bundle_copy))
    assert code == 1 and named in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s.csv").exists()


@workflow
def test_an_empty_test_folder_and_zero_threads_or_batch_size_are_refused(bundle_copy, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_offline(capsys, str(tmp_path / "empty"), "--bundle", str(bundle_copy))
    assert code == 1 and f"{tmp_path / 'empty'}: no test images" in err and len(err.strip().splitlines()) == 1
    for flag in ("--threads", "--batch-size"):
        with pytest.raises(SystemExit) as stopped:
            offline_predict.main([str(tmp_path), flag, "0", "--bundle", str(bundle_copy)])
        assert stopped.value.code == 2 and f"{flag}: 0 must be at least 1" in capsys.readouterr().err


# --- The package rule: refused before any job when a bundle cannot reproduce the run; cached exports ---

@workflow
def test_package_refuses_random_tta_before_any_job_runs(csv_run, tmp_path):
    workflow_dir, work = csv_run
    random_tta = write_override(tmp_path / "random.yaml", tta={"n_aug": 2, "mode": "random"})
    result = snakemake(workflow_dir, work, "-n", "package", configfiles=[CONFIGS / "tiny_csv.yaml", random_tta])
    said = result.stdout + result.stderr
    assert result.returncode != 0 and "Job stats" not in said  # stopped while planning
    assert "snakemake package cannot make a bundle of this run" in said
    assert "tta.mode random: its 2 augmented passes are drawn from torch's random generator" in said


@workflow
def test_package_names_a_backbone_that_does_not_export_before_any_job_runs(csv_run, tmp_path, monkeypatch):
    """What the export check found is cached like the backbone check; a cached refusal must stop the plan."""
    from pipeline.workflow import backbone_check

    workflow_dir, work = csv_run
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # part of the cache key, as in the run below
    cache = tmp_path / "cache" / "lesson2-pipeline"
    cache.mkdir(parents=True)
    key = backbone_check.cache_key("tf_efficientnet_lite0", "none")
    versions = f"{backbone_check._version('onnx')}-{backbone_check._version('onnxruntime')}"
    (cache / f"export-{key}-{versions}.json").write_text(json.dumps({"problem": "UnsupportedOperatorError: aten::x"}))
    result = snakemake(workflow_dir, work, "-n", "package", configfiles=[CONFIGS / "tiny_csv.yaml"],
                       env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    said = result.stdout + result.stderr
    assert result.returncode != 0 and "Job stats" not in said
    assert "model.arch tf_efficientnet_lite0 does not export to ONNX: UnsupportedOperatorError" in said


@workflow
def test_a_calibration_edit_remakes_the_bundle_without_exporting_again(csv_bundle, csv_run, tmp_path):
    workflow_dir, work = csv_run
    copy = tmp_path / "work"
    shutil.copytree(work, copy, symlinks=True)  # copy2 keeps mtimes: Snakemake sees the run as it was
    edit = write_override(tmp_path / "edit.yaml", calibration={"enabled": False},
                          package={"wheels": True, "quantize": "int8"})
    result = snakemake(workflow_dir, copy, "package", configfiles=[CONFIGS / "tiny_csv.yaml", edit])
    assert result.returncode == 0, result.stderr[-2000:]
    log = (copy / "out" / "logs" / "package.log").read_text()
    assert "models/model.onnx: found in the export cache" in log and "exported from" not in log
    manifest = json.loads((copy / "out" / "package" / "manifest.json").read_text())
    assert manifest["calibration"]["chosen"] == "tta_mean"  # calibration off: fastai's TTA mean
