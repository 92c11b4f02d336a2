"""python -m pipeline.sweep end to end on a tiny recipe (tests/configs/sweep_csv.yaml, sweep_space.yaml): four trials,
two side by side, killed once mid-trial and resumed; pruning, the work trials share, the confirmation run, the files
it leaves and the MLflow runs. Then bad input, refused before any trial."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest
import yaml

from conftest import CONFIGS, REPO, planned_jobs, snakemake, write_override
from pipeline.sweep import study as studies

pytestmark = pytest.mark.workflow

STUDY = "s"
RECIPE = CONFIGS / "sweep_csv.yaml"
SPACE = CONFIGS / "sweep_space.yaml"
TRIALS = 4


def sweep_command(*extra: str, recipe=(RECIPE,), space=SPACE, trials=TRIALS, study=STUDY) -> list[str]:
    return [sys.executable, "-m", "pipeline.sweep", "--configfile", *map(str, recipe), "--space", str(space),
            "--trials", str(trials), "--parallel", "2", "--study", study, "--cores", "1", *extra]


def environment() -> dict:
    """Every test's sweep logs to mlflow.db in its own working directory."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    return {**env, "PYTHONPATH": os.environ.get("PYTHONPATH") or str(REPO)}  # a scratch copy's, in a break check


def sweep(work: Path, *extra: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_command(*extra, **options), cwd=work, capture_output=True, text=True, timeout=900,
                          env=environment())


class SweepRun(NamedTuple):
    work: Path
    folder: Path          # out/sweep/<study>
    printed: str          # what the killed sweep printed, then what the resumed one did
    resumed: str          # what the resumed sweep printed
    kept: dict            # mtime of files finished before the kill, read before the resumption


def member_dir(work: Path, number: int) -> Path:
    return work / "out" / "members" / f"{STUDY}_t{number}"


@pytest.fixture(scope="session")
def sweep_run(tmp_path_factory) -> SweepRun:
    """The sweep, SIGKILLed with its Snakemake and jobs while the second batch fine-tunes, then the same command
    again."""
    work = tmp_path_factory.mktemp("sweep_run")
    first_log = open(work / "killed_sweep.log", "w")
    first = subprocess.Popen(sweep_command(), cwd=work, env=environment(), start_new_session=True,
                             stdout=first_log, stderr=subprocess.STDOUT)
    try:
        for _ in range(3000):
            if (member_dir(work, 2) / "logs" / "finetune_1_32.log").exists():
                break
            assert first.poll() is None, "the sweep ended before its second batch fine-tuned"
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)  # the driver, Snakemake and the TTA job at once
    finally:
        first.wait()
        first_log.close()
    finished = [member_dir(work, 0) / "head" / "model.pt", member_dir(work, 0) / "finetune" / "1_32" / "model.pt",
                member_dir(work, 1) / "finetune" / "1_32" / "model.pt"]
    kept = {path: path.stat().st_mtime_ns for path in finished}
    resumed = sweep(work)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    printed = (work / "killed_sweep.log").read_text() + resumed.stdout
    return SweepRun(work, work / "out" / "sweep" / STUDY, printed, resumed.stdout, kept)


def trials(run: SweepRun) -> pd.DataFrame:
    return pd.read_csv(run.folder / "trials.csv").set_index("number")


def owner_of(run: SweepRun, number: int) -> Path:
    """The member folder that holds a trial's first fine-tune size: its own, or the one it shares."""
    logs = json.loads((member_dir(run.work, number) / "sweep" / "early_score.json").read_text())["logs"]
    return run.work / Path(logs[0]).parents[2]


def test_a_killed_sweep_resumes_retrying_the_interrupted_trials_and_recomputing_nothing_finished(sweep_run):
    table = trials(sweep_run)
    interrupted = table[table["state"] == "FAIL"].index.tolist()
    assert 2 in interrupted and f"trial(s) {interrupted} were interrupted and are retried" in sweep_run.resumed
    for number in interrupted:
        retry = table[table["retry_of"] == number]
        assert len(retry) == 1 and retry["state"].iloc[0] in ("COMPLETE", "PRUNED")
        assert table.loc[retry.index[0], ["finetune.0.fits.0.lr", "tta.n_aug"]].tolist() == \
            table.loc[number, ["finetune.0.fits.0.lr", "tta.n_aug"]].tolist()
        # the retry reads the interrupted trial's chain, whose fine-tune job the kill cut short was redone there
        assert owner_of(sweep_run, retry.index[0]) == member_dir(sweep_run.work, number)
        assert not any(job.startswith(("precompute", "train_head", "finetune")) for job in
                       str(retry["jobs_run"].iloc[0]).split())
    assert {path: path.stat().st_mtime_ns for path in sweep_run.kept} == sweep_run.kept
    assert (table["state"].isin(["COMPLETE", "PRUNED"])).sum() == TRIALS


def test_pruning_stops_a_trial_after_its_first_fine_tune_size(sweep_run):
    table = trials(sweep_run)
    pruned = table[table["state"] == "PRUNED"]
    assert len(pruned) >= 1 and pruned["score"].isna().all()
    for number in pruned.index:
        assert (member_dir(sweep_run.work, number) / "sweep" / "early_score.json").exists()
        assert not (member_dir(sweep_run.work, number) / "sweep" / "score.json").exists()
        trained_in = owner_of(sweep_run, number)  # its own size (or its interrupted attempt's): what it is judged on
        assert trained_in.name in (f"{STUDY}_t{number}", f"{STUDY}_t{pruned.loc[number, 'retry_of']:.0f}")
        assert (trained_in / "finetune" / "1_32" / "model.pt").exists()
        assert not (trained_in / "tta").exists()  # its unfinished stages never ran
        assert f"trial {number} pruned after finetune/1_32: valid loss" in sweep_run.printed
    complete = table[table["state"] == "COMPLETE"]
    assert (pruned["early_loss"].min() > complete["early_loss"].median()) or len(complete) < 2


def test_a_trial_runs_only_the_stages_its_values_change(sweep_run):
    """Every trial shares trial 0's split, resize cache, activations and head; one with trial 0's lr also its
    fine-tune size; only the first trial computes activations and the head."""
    table = trials(sweep_run)
    first = table.loc[0]
    assert {"precompute:1", "train_head:1", "finetune:1"} <= set(first["jobs_run"].split())
    for number, trial in table.drop(index=0).iterrows():
        ran = str(trial["jobs_run"]).split()
        assert not any(job.startswith(("precompute", "train_head")) for job in ran), (number, ran)
        if trial["finetune.0.fits.0.lr"] == first["finetune.0.fits.0.lr"]:
            assert not any(job.startswith("finetune") for job in ran), (number, ran)


def test_the_best_trial_is_confirmed_on_a_fresh_seed_and_written_as_a_configfile_fragment(sweep_run):
    table = trials(sweep_run)
    complete = table[table["state"] == "COMPLETE"]
    best = complete["score"].idxmin()
    assert f"best: trial {best}, validation log loss {complete['score'].min():.4f}" in sweep_run.resumed
    confirmation = json.loads((sweep_run.work / "out" / "members" / f"{STUDY}_confirm{best}" / "sweep" /
                               "score.json").read_text())
    assert f"confirmation (trial {best}'s recipe, seed 43): validation log loss {confirmation['logloss']:.4f}" \
        in sweep_run.resumed
    best_yaml = yaml.safe_load((sweep_run.folder / "best.yaml").read_text())
    assert best_yaml["finetune"][0]["fits"][0]["lr"] == complete.loc[best, "finetune.0.fits.0.lr"]
    assert best_yaml["tta"]["n_aug"] == complete.loc[best, "tta.n_aug"]
    assert "seed" not in best_yaml
    page = (sweep_run.folder / "report.html").read_text()
    for plot in ("history.png", "slices.png", "early_losses.png"):
        assert (sweep_run.folder / plot).stat().st_size > 10_000 and f'src="{plot}"' in page


def test_the_study_and_every_trial_are_runs_in_mlflow(sweep_run):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{sweep_run.work / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = [run for run in runs if run.data.tags.get("run_kind") == "sweep"]
    assert len(parent) == 1 and parent[0].data.tags["sweep_study"] == STUDY and parent[0].info.status == "FINISHED"
    children = {int(run.data.tags["sweep_trial"]): run for run in runs
                if run.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id}
    table = trials(sweep_run)
    assert {number: run.data.tags["state"] for number, run in children.items()} == table["state"].to_dict()
    for number, run in children.items():
        assert run.data.params["tta.n_aug"] == str(table.loc[number, "tta.n_aug"])
        if table.loc[number, "state"] == "COMPLETE":
            assert run.data.metrics["score"] == pytest.approx(table.loc[number, "score"])
    assert parent[0].data.metrics["best_score"] == pytest.approx(table["score"].min())


def test_members_agreeing_up_to_a_stage_share_its_jobs_in_a_kfold_run(tmp_path):
    """Two members on 3 folds differing only in TTA: one chain of training per fold, two TTA jobs per fold."""
    members = write_override(tmp_path / "members.yaml", members={"a": {}, "b": {"tta": {"n_aug": 1}}},
                             out_dir=str(tmp_path / "out"))
    result = snakemake(REPO, tmp_path, "-n", configfiles=[CONFIGS / "kfold_csv.yaml", members])
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = planned_jobs(result.stdout)
    assert (jobs["precompute"], jobs["train_head"], jobs["finetune"], jobs["tta"], jobs["oof"]) == (3, 3, 3, 6, 2)


@pytest.mark.parametrize("space, extra, said", [
    ({"split.seed": {"int": [1, 5]}}, (), "split.seed: every trial trains on the same folds"),
    ({"finetune.0.fits.0.lr": {"log_uniform": [0, 1.0e-2]}}, (), "log_uniform needs bounds above 0"),
    ({"tta.n_aug": {"int": [4, 2]}}, (), "tta.n_aug: int needs low < high"),
    ({"model.arch": {"choice": []}}, (), "model.arch: choice needs a non-empty list"),
    ({"tta.n_agu": {"int": [1, 2]}}, (), "tta.n_agu: tta has no 'n_agu'"),
    ({"tta.n_aug": {"int": [1, 2]}, "sweep": {"pruner": "hyperband"}}, (), "sweep.pruner: 'hyperband' is not one"),
    ({"tta.n_aug": {"int": [1, 2]}}, ("--trials", "0"), "--trials: 0; a sweep needs at least 1 trial"),
    ({"tta.n_aug": {"int": [1, 2]}}, ("--profile", "clusterless"), "--profile: 'clusterless' is not a folder"),
    ({"tta.n_aug": {"int": [1, 2]}}, ("--study", "my-study"), "--study: 'my-study'; a study's name is letters"),
])
def test_bad_input_is_one_line_naming_it_before_any_trial(tmp_path, space, extra, said):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space))
    command = sweep_command(space=space_file)
    command += list(extra)  # a later flag wins over the default one
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=environment(), timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith(f"error: ") and said in line for line in lines), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()  # no job, not even the demo's data


def test_trials_whose_values_the_workflow_refuses_fail_unrun_and_a_space_of_only_those_stops(tmp_path):
    """9 deterministic TTA passes of a 1.1x zoom without flips (5 views): each such trial is marked failed with the
    workflow's own reason and never reaches Snakemake; a space that keeps giving them stops the sweep."""
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump({"tta.n_aug": {"choice": [9]}}))
    result = subprocess.run(sweep_command(space=space_file, trials=1), cwd=tmp_path, capture_output=True, text=True,
                            env=environment(), timeout=300)
    assert result.returncode == 1
    assert result.stdout.count("refused by the workflow's checks: ") == 4  # 3 per trial asked for, then one more
    assert "tta.n_aug 9 with tta.mode deterministic" in result.stdout
    assert result.stderr.startswith("error: 4 trials' values were refused by the workflow's checks")
    assert not (tmp_path / "data").exists() and not (tmp_path / "out" / "sweep" / STUDY / "logs").exists()


def test_a_second_driver_of_the_same_study_is_refused(tmp_path):
    folder = studies.folder("out", STUDY)  # as the recipe's out_dir reads, from the sweep's working directory
    with studies.driving(tmp_path / folder, STUDY):
        result = subprocess.run(sweep_command(), cwd=tmp_path, capture_output=True, text=True, env=environment(),
                                timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: study '{STUDY}' is being driven by pid {os.getpid()} "
                                     f"({folder / 'driver.lock'}); wait for it to end, or give this sweep another "
                                     "--study")
    assert not (tmp_path / "data").exists()
