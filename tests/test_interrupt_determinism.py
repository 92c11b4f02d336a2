"""Determinism, interruption and concurrency, with the real workflow on the micro recipe.

A reference run, a second run with a data_dir full of shell-hostile characters (same results), runs with a changed
seed, and runs whose resize / precompute / fine-tune job is SIGKILLed mid-way and then rerun through Snakemake.
"""
import filecmp
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
import yaml

from conftest import CONFIGS, REPO, snakemake

pytestmark = pytest.mark.workflow
MICRO = CONFIGS / "micro_csv.yaml"


def recipe_override(path, **keys):
    path.write_text(yaml.safe_dump(keys))
    return path


def run_ok(workdir, *configfiles, extra=()):
    result = snakemake(REPO, workdir, *extra, configfiles=[MICRO, *configfiles])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir / "out"


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return run_ok(tmp_path_factory.mktemp("reference"))


def test_same_recipe_twice_gives_identical_split_weights_and_submission(reference, tmp_path):
    odd_data_dir = tmp_path / "data dir 'with' \"quotes\"; and $dollars"
    other = run_ok(tmp_path / "work", recipe_override(tmp_path / "o.yaml", data_dir=str(odd_data_dir)))
    assert (odd_data_dir / "labels.csv").exists()
    assert filecmp.cmp(reference / "split.csv", other / "split.csv", shallow=False)
    assert same_weights(reference / "head" / "model.pt", other / "head" / "model.pt")
    assert filecmp.cmp(reference / "submission.csv", other / "submission.csv", shallow=False)


def test_a_changed_seed_changes_split_weights_and_submission(reference, tmp_path):
    other = run_ok(tmp_path, recipe_override(tmp_path / "o.yaml", seed=7, split={"seed": 7}))
    assert not filecmp.cmp(reference / "split.csv", other / "split.csv", shallow=False)
    assert not same_weights(reference / "head" / "model.pt", other / "head" / "model.pt")
    assert not filecmp.cmp(reference / "submission.csv", other / "submission.csv", shallow=False)


def start(workdir):
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(workdir), "--cores", "2", "--configfile", str(MICRO)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_stage_when(process, module, ready, timeout=300):
    """SIGKILL the job running `python -m pipeline.<module>` once `ready()` is true; return its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(process.pid).children(recursive=True):
            try:
                if child.cmdline()[1:3] == ["-m", f"pipeline.{module}"] and ready():  # python, not its shell
                    os.kill(child.pid, signal.SIGKILL)
                    return child.pid
            except psutil.NoSuchProcess:
                pass
        if process.poll() is not None:
            break
        time.sleep(0.005)
    pytest.fail(f"pipeline.{module} finished before it could be killed:\n{process.communicate()[0][-3000:]}")


@pytest.mark.parametrize("module, ready, compare", [
    ("resize", lambda out: sum(1 for _ in (out / "resized" / "40").rglob("*.jpg")) >= 5, "resized/40"),
    ("precompute", lambda out: any((out / "activations" / "32").glob(".*.tmp*")), "activations/32"),
    ("finetune", lambda out: (out / "finetune" / "1_32" / "resume.pt").exists(), "finetune/1_32/model.pt"),
])
def test_a_job_killed_mid_way_finishes_on_rerun_with_the_uninterrupted_result(reference, tmp_path, module, ready,
                                                                               compare):
    work, out = tmp_path / "work", tmp_path / "work" / "out"
    process = start(work)
    kill_stage_when(process, module, lambda: ready(out))
    log = process.communicate(timeout=300)[0]
    assert process.returncode != 0, "Snakemake should report the killed job"
    if module == "finetune":
        assert not (out / "finetune" / "1_32" / "model.pt").exists()
        assert (out / "finetune" / "1_32" / "resume.pt").exists()
    rerun = snakemake(REPO, work, configfiles=[MICRO])
    assert rerun.returncode == 0, log[-2000:] + rerun.stdout[-3000:] + rerun.stderr[-3000:]
    if module == "finetune":
        assert "resuming after epoch" in (out / "logs" / "finetune_1_32.log").read_text()
        assert not (out / "finetune" / "1_32" / "resume.pt").exists()
        assert same_weights(reference / compare, out / compare)
    else:
        comparison = filecmp.dircmp(reference / compare, out / compare)
        assert not comparison.diff_files and not comparison.left_only and not comparison.right_only
        for sub in comparison.subdirs.values():
            assert not sub.diff_files and not sub.left_only and not sub.right_only
    assert filecmp.cmp(reference / "submission.csv", out / "submission.csv", shallow=False)


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
