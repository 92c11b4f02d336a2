"""Shared fixtures: small generated data sets and a runner for the real workflow in a scratch copy of the repo."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import demo

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).resolve().parent / "configs"


@pytest.fixture(scope="session")
def csv_data(tmp_path_factory) -> Path:
    """A small Kaggle Dog Breed-layout data set (3 digit classes)."""
    path = tmp_path_factory.mktemp("csv_data") / "data"
    demo.build(path, "csv", n_labeled=60, n_test=12, classes=["zero", "one", "two"], seed=1, large_fraction=0.1)
    return path


@pytest.fixture(scope="session")
def folder_data(tmp_path_factory) -> Path:
    """A small Dogs vs Cats-layout data set (2 digit classes)."""
    path = tmp_path_factory.mktemp("folder_data") / "data"
    demo.build(path, "folders", n_labeled=40, n_test=10, classes=["one", "seven"], seed=1, large_fraction=0.0)
    return path


def copy_workflow(destination: Path) -> Path:
    """The workflow's own files, copied so a test may edit code without touching the repository."""
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", destination)
    for folder in ("rules", "config", "pipeline"):
        shutil.copytree(REPO / folder, destination / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def snakemake(workflow: Path, workdir: Path, *args: str, configfiles: list[Path] = ()) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(workflow / "Snakefile"),
               "--directory", str(workdir), "--cores", "2", *args]
    if configfiles:
        command += ["--configfile", *map(str, configfiles)]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """Rule -> job count from a dry run's 'Job stats' table (empty when nothing would run)."""
    jobs, in_table = {}, False
    for line in dry_run_output.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
        elif in_table and parts and parts[0] == "total":
            break
        elif in_table and len(parts) == 2 and parts[1].isdigit():
            jobs[parts[0]] = int(parts[1])
    return jobs
