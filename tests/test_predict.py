"""`python -m pipeline.stages.predict` on raw images, against the pipeline's own predictions for the same images."""
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from conftest import TEST_CORES
from pipeline.compute import precision
from pipeline.models import backbones
from pipeline.recipe import defaults as recipe_defaults
from pipeline.io import params_digest
from pipeline.models.classifier import Classifier, checkpoint_meta, cut_body, save_checkpoint
from pipeline.stages import predict, train_head

workflow = pytest.mark.workflow  # reads the reference run's checkpoint and predictions


def run_predict(micro_run, *args: str) -> None:
    predict.main(["--checkpoint", str(micro_run.out / "finetune" / "1_32" / "model.pt"), "--threads", str(TEST_CORES),
                  *args])


@workflow
def test_raw_test_images_get_the_tta_stages_plain_pass_probabilities(micro_run, tmp_path, capsys):
    """The same checkpoint, precision (the checkpoint's amp, as the TTA stage ran on this machine) and batch size as
    the TTA stage: equal to float32 rounding, or to bf16's (8 bits of mantissa) where autocast ran."""
    checkpoint = torch.load(micro_run.out / "finetune" / "1_32" / "model.pt", weights_only=True)
    run_predict(micro_run, str(micro_run.data / "test"), "--top-k", "2", "--csv", str(tmp_path / "p.csv"),
                "--batch-size", "16")
    predicted = pd.read_csv(tmp_path / "p.csv")
    test = pd.read_csv(micro_run.out / "test.csv", dtype={"id": str})
    plain = np.load(micro_run.out / "tta" / "test_passes.npy")[0]  # same checkpoint, no augmentation
    assert list(predicted.columns) == ["path", "one", "two", "zero"]
    by_path = dict(zip((micro_run.data / test["path"]).astype(str), plain))
    assert sorted(predicted["path"]) == sorted(by_path)
    np.testing.assert_allclose(predicted.iloc[:, 1:].to_numpy(), np.stack([by_path[p] for p in predicted["path"]]),
                               atol=2e-2 if checkpoint["meta"]["amp"] else 1e-5)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith(str(micro_run.data))]
    assert len(printed) == len(test) and all(line.count(", ") == 1 for line in printed)  # the top 2 classes each


@workflow
def test_a_model_trained_with_every_regulariser_records_them_and_holds_its_weight_average(micro_run):
    """The micro recipe's fine-tune trains with each regulariser on: the checkpoint says which, and what predict
    loads is the EMA of the weights (the model TTA and the epoch log's validation saw)."""
    meta = torch.load(micro_run.out / "finetune" / "1_32" / "model.pt", weights_only=True)["meta"]
    recipe = yaml.safe_load(micro_run.recipe.read_text())
    assert meta["regularise"] == {**recipe_defaults.defaults(("finetune.regularise",))["regularise"],
                                  **recipe["finetune"][0]["regularise"]}
    log = pd.read_csv(micro_run.out / "finetune" / "1_32" / "log.csv")
    metrics = json.loads((micro_run.out / "metrics.json").read_text())
    # TTA's plain pass of model.pt scores what the last epoch's validation (of the EMA model) scored.
    # The same model on the same images at the same precision: equal up to the order of the sums.
    assert metrics["valid_logloss_no_tta"] == pytest.approx(log["valid_loss"].iloc[-1], rel=1e-5)


@workflow
def test_an_unreadable_file_is_reported_and_the_others_are_still_predicted(micro_run, tmp_path, capsys):
    (tmp_path / "notes.jpg").write_text("not an image")
    good = sorted((micro_run.data / "test").glob("*.jpg"))[:2]
    with pytest.raises(SystemExit) as stopped:
        run_predict(micro_run, str(good[0]), str(tmp_path / "notes.jpg"), str(tmp_path / "missing.png"),
                    str(good[1]), "--csv", str(tmp_path / "p.csv"))
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'notes.jpg'}: cannot read as an image" in err and f"{tmp_path / 'missing.png'}" in err
    assert "2 of 4 files could not be read" in err
    assert pd.read_csv(tmp_path / "p.csv")["path"].tolist() == [str(good[0]), str(good[1])]


@workflow
def test_tta_averages_augmented_passes_into_probabilities(micro_run, tmp_path):
    image = sorted((micro_run.data / "test").glob("*.jpg"))[:3]
    run_predict(micro_run, *map(str, image), "--csv", str(tmp_path / "plain.csv"))
    run_predict(micro_run, *map(str, image), "--tta", "3", "--csv", str(tmp_path / "tta.csv"))
    plain, tta = (pd.read_csv(tmp_path / name).iloc[:, 1:].to_numpy() for name in ("plain.csv", "tta.csv"))
    np.testing.assert_allclose(tta.sum(axis=1), 1, atol=1e-6)
    assert not np.allclose(plain, tta)


@workflow
def test_a_checkpoint_that_does_not_say_how_it_resized_needs_the_shorter_side(micro_run, tmp_path, capsys):
    checkpoint = torch.load(micro_run.out / "finetune" / "1_32" / "model.pt", weights_only=True)
    del checkpoint["meta"]["images"]
    torch.save(checkpoint, tmp_path / "old.pt")
    image = str(sorted((micro_run.data / "test").glob("*.jpg"))[0])
    with pytest.raises(SystemExit):
        predict.main(["--checkpoint", str(tmp_path / "old.pt"), image])
    assert "pass --shorter-side" in capsys.readouterr().err
    predict.main(["--checkpoint", str(tmp_path / "old.pt"), image, "--shorter-side", "40", "--top-k", "1"])
    assert re.fullmatch(rf"{re.escape(image)}: (zero|one|two) [01]\.\d{{3}}", capsys.readouterr().out.splitlines()[-1])


@workflow
@pytest.mark.parametrize("native_bf16, checkpoint_amp, flag, expected", [
    (False, False, None, False),   # as trained
    (True, False, None, False),    # as trained, though this CPU could run bf16
    (True, True, None, True),
    (False, True, "off", False),   # the flag wins
    (True, False, "auto", True),   # auto decides as the recipe's amp: auto does (here: measured bf16 faster)
    (False, False, "auto", False),
])
def test_predict_runs_in_the_precision_the_checkpoints_validation_ran_in_unless_told(
        micro_run, tmp_path, monkeypatch, native_bf16, checkpoint_amp, flag, expected):
    checkpoint = torch.load(micro_run.out / "finetune" / "1_32" / "model.pt", weights_only=True)
    checkpoint["meta"]["amp"] = checkpoint_amp
    torch.save(checkpoint, tmp_path / "model.pt")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native_bf16)
    monkeypatch.setattr(precision, "CACHE_DIR", tmp_path / "cache")  # not this machine's measured answer
    rates = {"train": {"fp32": 100.0, "bf16": 50.0}, "infer": {"fp32": 100.0, "bf16": 150.0}}
    monkeypatch.setattr(precision, "measure", lambda **probe: {"img_per_s": rates})  # bf16 predicts faster
    seen = []

    def recording(model, frame, cache_dir, params, device, amp, name):
        seen.append(amp)
        return np.log(np.full((1, len(frame), 3), 1 / 3))

    monkeypatch.setattr(predict, "tta_log_probs", recording)
    image = str(sorted((micro_run.data / "test").glob("*.jpg"))[0])
    predict.main(["--checkpoint", str(tmp_path / "model.pt"), image, *(["--amp", flag] if flag else [])])
    assert seen == [expected]


# ---- bad arguments and bad checkpoints: one line each, never a traceback or a NaN ----------------------------------

@pytest.fixture
def small_checkpoint(tmp_path):
    """A model.pt as the stages write it (resnet18 with random weights, 3 classes, 32 px) and an image to predict."""
    backbone = backbones.resolve("resnet18")
    model = Classifier(*cut_body(backbone, backbones.create(backbone, "none", quiet=True)), 3, [0.25, 0.5], [512],
                       "resnet18")
    params = recipe_defaults.complete({"arch": "resnet18", "size": 32, "images": {"shorter_side": 40}},
                                      train_head.RECIPE_KEYS)
    save_checkpoint(model, tmp_path / "model.pt", checkpoint_meta(params, ["a", "b", "c"], "head", model, False,
                                                                  params_digest(params)))
    Image.new("RGB", (50, 40), (200, 30, 30)).save(tmp_path / "photo.jpg")
    return tmp_path / "model.pt", tmp_path / "photo.jpg"


def test_a_checkpoint_the_stages_wrote_predicts(small_checkpoint, capsys):
    checkpoint, photo = small_checkpoint
    predict.main(["--checkpoint", str(checkpoint), str(photo), "--top-k", "3", "--tta", "1"])
    line = capsys.readouterr().out.splitlines()[-1]
    assert re.fullmatch(rf"{re.escape(str(photo))}: [abc] [01]\.\d{{3}}, [abc] [01]\.\d{{3}}, [abc] [01]\.\d{{3}}", line)


@pytest.mark.parametrize("flags, message", [
    (["--tta", "-1"], "--tta >= 0"),
    (["--top-k", "0"], "--top-k and --batch-size must be >= 1"),
    (["--batch-size", "0"], "--top-k and --batch-size must be >= 1"),
])
def test_arguments_that_would_give_nan_or_nothing_are_refused(small_checkpoint, capsys, flags, message):
    checkpoint, photo = small_checkpoint
    with pytest.raises(SystemExit) as stopped:
        predict.main(["--checkpoint", str(checkpoint), str(photo), *flags])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("flags, said", [
    (["--batch-size", "abc"], "argument --batch-size: invalid int value: 'abc'"),
    (["--shorter-side", "0"], "--shorter-side: 0 is less than the minimum of 8"),
    (["--jpeg-quality", "500"], "--jpeg-quality: 500 is greater than the maximum of 100"),
    (["--max-zoom", "0.5", "--tta", "2"], "--max-zoom: 0.5 is less than the minimum of 1"),
    (["--device", "gpu"], "--device: 'gpu' does not match"),
    (["--csv", "."], "--csv . is a folder; name the CSV file to write"),
])
def test_an_argument_the_recipe_would_refuse_is_one_line_before_the_checkpoint_loads(tmp_path, capsys, flags, said):
    with pytest.raises(SystemExit) as stopped:
        predict.main(["--checkpoint", str(tmp_path / "not_loaded.pt"), "photo.jpg", *flags])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.startswith(f"error: {said}") and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("make, said", [
    (lambda path: path.mkdir(), "is a folder; pass the model.pt in it"),
    (lambda path: path.write_bytes(b""), "cannot be read (truncated, or not a model.pt the pipeline wrote)"),
    (lambda path: None, "not found"),
], ids=["folder", "zero bytes", "missing"])
def test_a_checkpoint_that_is_no_file_of_weights_is_one_line_naming_it(tmp_path, capsys, make, said):
    make(tmp_path / "model.pt")
    with pytest.raises(SystemExit) as stopped:
        predict.main(["--checkpoint", str(tmp_path / "model.pt"), "photo.jpg"])
    err = capsys.readouterr().err
    assert stopped.value.code == 1 and err.startswith(f"error: checkpoint {tmp_path / 'model.pt'} {said}"), err
    assert len(err.strip().splitlines()) == 1


def spoilt(checkpoint, how):
    if how == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:5000])
    elif how == "text":
        checkpoint.write_text("not a checkpoint")
    elif how == "bare state dict":
        torch.save(torch.load(checkpoint, weights_only=True)["state_dict"], checkpoint)
    else:  # meta and weights disagree: the meta names a fourth class the head has no output for
        saved = torch.load(checkpoint, weights_only=True)
        saved["meta"]["classes"].append("d")
        torch.save(saved, checkpoint)


def test_one_image_that_cannot_be_read_is_one_line_naming_it(small_checkpoint, capsys):
    checkpoint, photo = small_checkpoint
    with pytest.raises(SystemExit) as stopped:
        predict.main(["--checkpoint", str(checkpoint), str(photo.with_name("missing.jpg"))])
    err = capsys.readouterr().err
    assert stopped.value.code == 1 and err.startswith(f"error: {photo.with_name('missing.jpg')}: cannot read as an "
                                                      "image") and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("how, message", [
    ("truncated", "cannot be read (truncated, or not a model.pt the pipeline wrote)"),
    ("text", "cannot be read (truncated, or not a model.pt the pipeline wrote)"),
    ("bare state dict", "without a state_dict: not a model.pt the pipeline wrote"),
    ("weights unlike its meta", "does not fit resnet18 with its head"),
])
def test_a_bad_checkpoint_is_one_line_naming_the_file(small_checkpoint, capsys, how, message):
    checkpoint, photo = small_checkpoint
    spoilt(checkpoint, how)
    with pytest.raises(SystemExit) as stopped:
        predict.main(["--checkpoint", str(checkpoint), str(photo)])
    err = capsys.readouterr().err
    assert stopped.value.code == 1 and err.startswith(f"error: checkpoint {checkpoint} ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_a_folder_is_searched_recursively_for_image_files_in_natural_order(tmp_path):
    for path in ["a/img10.jpg", "a/img2.JPG", "a/deeper/x.png", "a/notes.txt", "a/deeper/model.pt", "b.webp"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"")
    found = predict.image_files([str(tmp_path / "a"), str(tmp_path / "b.webp"), str(tmp_path / "missing.jpg")])
    assert [str(path.relative_to(tmp_path)) for path in found] == [
        "a/deeper/x.png", "a/img2.JPG", "a/img10.jpg", "b.webp", "missing.jpg"]  # a named file is kept, to report
