"""Snapshot ensembles (fastai 0.7's `cycle_save_name`): the weights at the end of each SGDR cycle of a stage's last
fit, handed over by `run_fits` and kept by the fine-tune stage, also across a killed job and its rerun."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import Interrupted, InterruptedInEpoch, same_state, tiny_problem
from pipeline.report import plots
from pipeline.recipe import defaults as recipe_defaults
from pipeline.train import run as training
from pipeline.data.dataset import read_split
from pipeline.train.fit import EpochLog, Phase, ResumePoint, run_fits
from pipeline.io import params_digest
from pipeline.models.classifier import build_seeded_classifier, checkpoint_meta, restore_model, save_checkpoint
from pipeline.stages import demo_data, finetune, resize, split, tta

CPU = torch.device("cpu")
# Cycles of 1, 2 and 4 epochs in the last fit: they end after its epochs 0, 2 and 6.
FITS = [{"lr": 0.1, "n_cycle": 2, "cycle_len": 1}, {"lr": 0.1, "n_cycle": 3, "cycle_len": 1, "cycle_mult": 2}]


def train_keeping_snapshots(fits, resume_path=None, fail_at_cycle=None):
    """The tiny problem trained through `fits`; returns the model and (fit, epoch, cycle, weights) per callback.
    With `fail_at_cycle`, the callback raises there once, as a job killed while writing that snapshot."""
    model, train, valid = tiny_problem()
    log = EpochLog(None)
    resume = ResumePoint(resume_path, "key", model, log) if resume_path else None
    kept = []

    def keep(cycle):
        if cycle == fail_at_cycle:
            raise Interrupted
        kept.append((log.rows[-1]["fit"], log.rows[-1]["epoch"], cycle, copy.deepcopy(model.state_dict())))

    run_fits(Phase(name="t", model=model, train_batches=train, valid_batches=valid, device=CPU, log=log, resume=resume),
             fits, on_cycle_end=keep)
    return model, kept


def test_the_callback_fires_at_the_end_of_each_cycle_of_the_last_fit_only():
    model, kept = train_keeping_snapshots(FITS)
    assert [(fit, epoch, cycle) for fit, epoch, cycle, _ in kept] == [(1, 0, 1), (1, 2, 2), (1, 6, 3)]
    assert same_state(kept[-1][3], model.state_dict())  # the last cycle's snapshot is the final model


def test_a_snapshot_is_the_model_a_fit_ending_with_that_cycle_gives():
    _, kept = train_keeping_snapshots(FITS)
    for cycle in (1, 2):
        shorter, _ = train_keeping_snapshots([FITS[0], {**FITS[1], "n_cycle": cycle}])
        assert same_state(kept[cycle - 1][3], shorter.state_dict()), cycle


def test_a_fit_without_cycle_len_has_no_cycles_to_snapshot():
    _, kept = train_keeping_snapshots([{"lr": 0.1, "n_cycle": 3}])
    assert kept == []


def test_a_job_killed_while_keeping_a_snapshot_keeps_it_on_the_rerun(tmp_path):
    # The callback runs before the epoch's resume point is saved, so the rerun repeats that epoch and its callback.
    with pytest.raises(Interrupted):
        train_keeping_snapshots(FITS, resume_path=tmp_path / "resume.pt", fail_at_cycle=2)
    model, kept = train_keeping_snapshots(FITS, resume_path=tmp_path / "resume.pt")
    assert [cycle for _, _, cycle, _ in kept] == [2, 3]
    clean_model, clean = train_keeping_snapshots(FITS)
    assert same_state(kept[0][3], clean[1][3])
    assert same_state(model.state_dict(), clean_model.state_dict())


# The fine-tune stage end to end: 32 training images at 24 px, 2 batches an epoch, a last fit of 3 one-epoch cycles;
# the body stays frozen, as at the first size of the lesson, which keeps each run to a couple of seconds.
PARAMS = {"arch": "resnet18", "weights": "none", "size": 24, "unfreeze": False, "batch_size": 16, "num_workers": 0,
          "device": "cpu", "snapshots": 3, "fits": [{"lr": [1e-3, 3e-3, 3e-3], "n_cycle": 3, "cycle_len": 1}]}


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    # A third of each stage run is drawing its figures, which these tests do not look at.
    for figure in ("lr_schedules", "training_curves"):
        monkeypatch.setattr(plots, figure, lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory) -> dict:
    """A split, a resize cache and a from-scratch 'head' checkpoint: what the fine-tune stage reads."""
    root = tmp_path_factory.mktemp("snapshot_inputs")
    data = root / "data"
    demo_data.build(data, "csv", n_labeled=40, n_test=5, classes=["zero", "one"], seed=1, large_fraction=0.0)
    split.main(["--data-dir", str(data), "--split-csv", str(root / "split.csv"), "--test-csv", str(root / "test.csv"),
                "--class-counts", str(root / "class_counts.csv"), "--params", json.dumps({"layout": "csv"})])
    resize.main(["--data-dir", str(data), "--out-dir", str(root / "resized"), "--threads", "1",
                 "--params", json.dumps({"layout": "csv", "shorter_side": 28})])
    classes = read_split(root / "split.csv")[2]
    head_params = recipe_defaults.complete(PARAMS, (*finetune.RECIPE_KEYS, "model.ps", "model.xtra_fc"))
    head = build_seeded_classifier(head_params, len(classes))
    save_checkpoint(head, root / "head.pt", checkpoint_meta(head_params, classes, "head", head, False,
                                                               params_digest(PARAMS)))
    return {"root": root, "classes": classes}


def run_stage(inputs: dict, out_dir: Path, snapshots: list[Path], params: dict = PARAMS) -> None:
    root = inputs["root"]
    flag = ["--snapshots", *map(str, snapshots)] if snapshots else []
    params = {**params, "snapshots": len(snapshots) + 1}  # the recipe's count: these paths and model.pt
    finetune.main(["--split-csv", str(root / "split.csv"), "--cache-dir", str(root / "resized"),
                   "--checkpoint", str(root / "head.pt"), "--out-dir", str(out_dir), "--threads", "1",
                   "--params", json.dumps(params), *flag])


def snapshot_paths(out_dir: Path, count: int = 2) -> list[Path]:
    return [out_dir / "snapshots" / f"cycle_{cycle}.pt" for cycle in range(1, count + 1)]


def load(path: Path, classes: list[str]) -> tuple[dict, dict]:
    model, meta = restore_model(path, "resnet18", classes)  # restore_model loads with weights_only=True
    return model.state_dict(), meta


@pytest.fixture(scope="module")
def clean_run(stage_inputs, tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("clean") / "finetune"
    run_stage(stage_inputs, out_dir, snapshot_paths(out_dir))
    return out_dir


def test_the_stage_keeps_the_cycles_before_the_final_one_as_full_checkpoints(stage_inputs, clean_run):
    classes = stage_inputs["classes"]
    (first, first_meta), (second, second_meta) = [load(path, classes) for path in snapshot_paths(clean_run)]
    final, final_meta = load(clean_run / "model.pt", classes)
    assert (first_meta["snapshot_cycle"], second_meta["snapshot_cycle"]) == (1, 2)
    assert "snapshot_cycle" not in final_meta
    assert first_meta["stage"] == second_meta["stage"] == "finetune"
    assert not same_state(first, second) and not same_state(first, final) and not same_state(second, final)
    assert not list(clean_run.glob(".snapshots-*")) and not (clean_run / "resume.pt").exists()


def kill_in_epoch(epoch):
    def arm(monkeypatch):
        real_loaders = finetune.image_loaders

        def image_loaders(*args, **kwargs):
            train, valid = real_loaders(*args, **kwargs)
            return InterruptedInEpoch(train, epoch), valid
        monkeypatch.setattr(finetune, "image_loaders", image_loaders)
    return arm


def kill_while_writing_the_model(monkeypatch):
    # Training is over and the snapshots are on their paths: Snakemake will delete them before the rerun.
    real_save = training.save_checkpoint

    def save_checkpoint(model, path, meta):
        if Path(path).name == "model.pt":
            raise Interrupted
        real_save(model, path, meta)
    monkeypatch.setattr(training, "save_checkpoint", save_checkpoint)


@pytest.mark.parametrize("kill", [kill_in_epoch(1), kill_while_writing_the_model],
                         ids=["in cycle 2", "writing model.pt"])
def test_a_killed_job_rerun_ends_with_the_uninterrupted_snapshots(stage_inputs, clean_run, tmp_path, monkeypatch,
                                                                  capsys, kill):
    out_dir = tmp_path / "finetune"
    with monkeypatch.context() as patched:
        kill(patched)
        with pytest.raises(Interrupted):
            run_stage(stage_inputs, out_dir, snapshot_paths(out_dir))
    assert (out_dir / "resume.pt").exists() and list(out_dir.glob(".snapshots-*/cycle_1.pt"))
    for declared_output in [*snapshot_paths(out_dir), out_dir / "model.pt"]:
        declared_output.unlink(missing_ok=True)  # as Snakemake does before rerunning a failed job
    capsys.readouterr()
    run_stage(stage_inputs, out_dir, snapshot_paths(out_dir))
    assert "resuming after epoch" in capsys.readouterr().out  # so the kept cycles come from the staging folder
    classes = stage_inputs["classes"]
    for name in ["snapshots/cycle_1.pt", "snapshots/cycle_2.pt", "model.pt"]:
        (rerun, rerun_meta), (clean, clean_meta) = load(out_dir / name, classes), load(clean_run / name, classes)
        assert same_state(rerun, clean) and rerun_meta == clean_meta, name
    assert not list(out_dir.glob(".snapshots-*")) and not (out_dir / "resume.pt").exists()


def test_a_rerun_asking_for_more_snapshots_starts_over(stage_inputs, clean_run, tmp_path, monkeypatch, capsys):
    # Killed in cycle 3 having staged cycle 2 only; resuming there would leave cycle 1 missing.
    out_dir = tmp_path / "finetune"
    with monkeypatch.context() as patched:
        kill_in_epoch(2)(patched)
        with pytest.raises(Interrupted):
            run_stage(stage_inputs, out_dir, snapshot_paths(out_dir, 1))
    capsys.readouterr()
    run_stage(stage_inputs, out_dir, snapshot_paths(out_dir))
    assert "removed" in capsys.readouterr().out
    classes = stage_inputs["classes"]
    for name in ["snapshots/cycle_1.pt", "snapshots/cycle_2.pt", "model.pt"]:
        assert same_state(load(out_dir / name, classes)[0], load(clean_run / name, classes)[0]), name
    assert not list(out_dir.glob(".snapshots-*"))


@pytest.mark.parametrize("fits", [
    [{"lr": 1e-3, "n_cycle": 3, "cycle_len": 1}],
    [{"lr": 1e-3, "n_cycle": 1, "cycle_len": 1}, {"lr": 1e-3, "n_cycle": 4}],
], ids=["fewer cycles than snapshots", "no cycle_len"])
def test_more_snapshots_than_the_last_fit_has_cycles_fail_clearly(stage_inputs, tmp_path, capsys, fits):
    out_dir = tmp_path / "finetune"
    with pytest.raises(SystemExit):
        run_stage(stage_inputs, out_dir, snapshot_paths(out_dir, 3), {**PARAMS, "fits": fits})
    assert "3 snapshots plus the final weights need a last fit with cycle_len and at least 4 cycles" in \
        capsys.readouterr().err
    assert not out_dir.exists()


def test_tta_averages_the_snapshots_predictions_pass_by_pass(stage_inputs, clean_run, tmp_path):
    """The ensemble's passes are the mean of each checkpoint's own, as TTA computes them one checkpoint at a time."""
    root = stage_inputs["root"]
    params = {"arch": "resnet18", "size": 24, "n_aug": 1, "batch_size": 16, "num_workers": 0, "device": "cpu",
              "augmentation": "basic", "max_zoom": 1.1, "seed": 42}

    def valid_passes(name, checkpoints):
        tta.main(["--split-csv", str(root / "split.csv"), "--test-csv", str(root / "test.csv"), "--cache-dir",
                  str(root / "resized"), "--checkpoint", *map(str, checkpoints), "--out-dir", str(tmp_path / name),
                  "--metrics", str(tmp_path / name / "metrics.json"), "--threads", "1", "--params",
                  json.dumps(params)])
        return np.load(tmp_path / name / "valid_passes.npy")

    checkpoints = [*snapshot_paths(clean_run), clean_run / "model.pt"]
    alone = [valid_passes(f"alone_{index}", [checkpoint]) for index, checkpoint in enumerate(checkpoints)]
    ensemble = valid_passes("ensemble", checkpoints)
    np.testing.assert_allclose(ensemble, np.mean(alone, axis=0), atol=1e-6)
    assert not np.allclose(alone[0], alone[2], atol=1e-3)  # the snapshots do predict differently
    listed = json.loads((tmp_path / "ensemble" / "metrics.json").read_text())["snapshots"]
    assert [row["checkpoint"] for row in listed] == ["cycle_1.pt", "cycle_2.pt", "model.pt"]


def test_a_checkpoint_names_the_recipe_slice_that_made_it(stage_inputs, clean_run):
    """meta.params_hash is the digest of the stage's params, key order aside: two checkpoints with the same hash were
    trained by the same recipe slice, and one lr changed gives another."""
    _, meta = load(clean_run / "model.pt", stage_inputs["classes"])
    assert meta["params_hash"] == params_digest(PARAMS) == params_digest(dict(reversed(list(PARAMS.items()))))
    assert params_digest({**PARAMS, "fits": [{**PARAMS["fits"][0], "lr": 1e-2}]}) != meta["params_hash"]
