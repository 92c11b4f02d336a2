"""Determinism, interruption, concurrency and the activation cache guard, with the real workflow on the micro recipe
(which loads images in worker processes).

Each is compared with the reference run (`micro_run` in conftest.py: the same recipe on the same images, held as a
user's data): a run with a changed seed must give another split and other weights; a run whose resize, precompute,
train_head and fine-tune jobs are each SIGKILLed mid-way (Snakemake restarting each killed job once, `--retries 1`;
the fine-tune killed again in its restart, so that a second Snakemake invocation finishes it) must be identical,
which also shows that two runs of one recipe give the same split, weights and submission.
Then the head stage refusing activations that are not its own.
"""
import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from conftest import CONFIGS, REPO, TEST_CORES, same_state, snakemake, write_override
from pipeline.stages import train_head

pytestmark = pytest.mark.workflow
MICRO = CONFIGS / "micro_csv.yaml"


def run_ok(workdir, *configfiles, extra=()):
    result = snakemake(REPO, workdir, *extra, configfiles=[MICRO, *configfiles])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir / "out"


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def same_weights(a, b):
    return same_state(weights(a), weights(b))


def same_tree(a, b):
    comparison = filecmp.dircmp(a, b)
    return (not comparison.diff_files and not comparison.left_only and not comparison.right_only
            and all(same_tree(a / name, b / name) for name in comparison.subdirs))


def test_a_changed_seed_changes_the_split_and_the_weights(micro_run, tmp_path):
    # Up to the head: everything after it starts from the head's weights, so they differ too once those do.
    other = run_ok(tmp_path, write_override(tmp_path / "o.yaml", seed=7, split={"seed": 7}),
                   extra=["--until", "train_head"])
    assert not filecmp.cmp(micro_run.out / "split.csv", other / "split.csv", shallow=False)
    assert not same_weights(micro_run.out / "head" / "model.pt", other / "head" / "model.pt")


def start(workdir, *args):
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(workdir), "--cores", str(TEST_CORES), *args, "--configfile", str(MICRO)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_stage_when(process, module, ready, timeout=600):
    """SIGKILL the job running `python -m pipeline.stages.<module>` once `ready()` is true; return its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = False
        for child in psutil.Process(process.pid).children(recursive=True):
            try:
                # the stage's own python (not its shell, nor one of its forked workers, which share its command line)
                stage = ["-m", f"pipeline.stages.{module}"]
                if child.cmdline()[1:3] == stage and child.parent().cmdline()[1:3] != stage:
                    running = True
                    if ready():
                        os.kill(child.pid, signal.SIGKILL)
                        return child.pid
            except psutil.NoSuchProcess:
                pass
        if process.poll() is not None:
            break
        # Fast only while the stage runs (a resize is over in a second); walking the process tree every 5 ms for
        # the whole run would keep a core busy beside the test run's other worker.
        time.sleep(0.005 if running else 0.05)
    pytest.fail(f"pipeline.stages.{module} finished before it could be killed:\n{process.communicate()[0][-3000:]}")


def resume_point(out, folder):
    """Which resume point a training stage last saved (each save is a new file, renamed into place), or None."""
    try:
        stat = (out / folder / "resume.pt").stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


# (stage, when to kill it, what it left behind), in the order the chain reaches them. Snakemake restarts each
# killed job once (`--retries 1`); the fine-tune is killed in its restart too, once that has resumed and saved a
# later epoch, which fails the run: a second Snakemake invocation resumes it again and finishes.
KILLS = [
    ("resize", lambda out, _: sum(1 for _ in (out / "resized" / "40").rglob("*.jpg")) >= 5, None),
    ("precompute", lambda out, _: any((out / "activations" / "32").glob(".*.tmp*")), None),
    ("train_head", lambda out, _: resume_point(out, "head") is not None, "head"),
    ("finetune", lambda out, _: resume_point(out, "finetune/1_32") is not None, "finetune/1_32"),
    ("finetune", lambda out, killed: resume_point(out, "finetune/1_32") not in (None, killed), "finetune/1_32"),
]


def test_jobs_killed_mid_way_finish_on_rerun_with_the_uninterrupted_results(micro_run, tmp_path):
    work, out = tmp_path / "work", tmp_path / "work" / "out"
    process, killed, saved = start(work, "--retries", "1"), None, []
    for module, ready, training_folder in KILLS:
        kill_stage_when(process, module, lambda: ready(out, killed))
        if training_folder:  # a training stage keeps its resume point and leaves no model behind
            killed = resume_point(out, training_folder)
            assert killed is not None, module
            assert not (out / training_folder / "model.pt").exists(), module
            state = torch.load(out / training_folder / "resume.pt", map_location="cpu", weights_only=True)
            saved.append((state["fit"], state["epoch"]))
    log = process.communicate(timeout=600)[0]  # generous: 2-core machines here vary 3x in speed
    assert process.returncode != 0, f"the fine-tune job killed twice should fail the run:\n{log[-2000:]}"
    for rule in ("resize", "precompute", "train_head", "finetune"):  # Snakemake saw each kill, restarted the job
        assert log.count(f"Error in rule {rule}:") == (2 if rule == "finetune" else 1), f"{rule}:\n{log[-3000:]}"
    assert log.count("Trying to restart job") == 4, log[-3000:]
    head, finetune_first, finetune_restart = saved
    assert finetune_restart > finetune_first  # the restart resumed, then saved a later epoch before it was killed
    assert (out / "finetune" / "1_32" / "resume.pt").exists() and not (out / "finetune" / "1_32" / "model.pt").exists()
    rerun = snakemake(REPO, work, configfiles=[MICRO])
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    for log_name, (fit, epoch) in (("train_head.log", head), ("finetune_1_32.log", finetune_restart)):
        # train_head in Snakemake's restart, the fine-tune in the second invocation: each where it was last killed
        assert f"resuming after epoch {epoch} of fit {fit} " in (out / "logs" / log_name).read_text(), log_name
    for folder in ("resized/40", "activations/32"):
        assert same_tree(micro_run.out / folder, out / folder), folder
    for model in ("head/model.pt", "finetune/1_32/model.pt"):
        assert same_weights(micro_run.out / model, out / model), model
        assert not (out / model).with_name("resume.pt").exists()
    assert filecmp.cmp(micro_run.out / "submission.csv", out / "submission.csv", shallow=False)


def test_a_second_snakemake_in_the_same_directory_stops_at_the_lock(tmp_path):
    first = start(tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not any((tmp_path / ".snakemake" / "locks").glob("*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        # --rerun-incomplete: otherwise the first run's job in flight may be reported as an incomplete file
        # before the lock is even tried; with it, only the lock stands between the two runs.
        second = snakemake(REPO, tmp_path, "--rerun-incomplete", configfiles=[MICRO])
        assert second.returncode != 0
        assert "Directory cannot be locked" in second.stdout + second.stderr
    finally:
        first.kill()
        first.communicate()


def head_stage_params(out):
    """The params the workflow passed to train_head, as its log's first line records them."""
    first_line = (out / "logs" / "train_head.log").read_text().splitlines()[0]
    return first_line.split(" params=", 1)[1]


@pytest.mark.parametrize("tamper, message", [
    (lambda manifest: manifest.update(split_digest="0" * 16), "activations do not match this run"),
    (lambda manifest: manifest.update(size=64), "activations do not match this run"),
    (lambda manifest: manifest.update(body_digest="0" * 16), "rebuilt backbone differs"),
], ids=["another split", "another size", "another backbone"])
def test_the_head_stage_refuses_activations_that_are_not_its_own(micro_run, tmp_path, capsys, tamper, message):
    activations = tmp_path / "activations"
    shutil.copytree(micro_run.out / "activations" / "32", activations)
    manifest = json.loads((activations / "manifest.json").read_text())
    tamper(manifest)
    (activations / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit):
        train_head.main(["--split-csv", str(micro_run.out / "split.csv"), "--activations", str(activations),
                         "--cache-dir", str(micro_run.out / "resized" / "40"), "--out-dir", str(tmp_path / "head"),
                         "--threads", str(TEST_CORES), "--params", head_stage_params(micro_run.out)])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "head" / "model.pt").exists()
