"""Shared fixtures: small generated data sets and a runner for the real workflow in a scratch copy of the repo."""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, NamedTuple

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from pipeline.data import demo_folder
from pipeline.recipe.defaults import filled
from pipeline.train.fit import EpochLog, Phase, ResumePoint, TensorBatches, run_fits
from pipeline.stages import demo_data

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).resolve().parent / "configs"
SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())


def with_defaults(recipe: dict) -> dict:
    """The recipe as the checks after the schema see it, with the defaults filled in as the plan-time check fills them."""
    return filled(recipe)


@pytest.fixture(scope="session")
def csv_data(tmp_path_factory) -> Path:
    """A small Kaggle Dog Breed-layout data set (3 digit classes)."""
    path = tmp_path_factory.mktemp("csv_data") / "data"
    demo_data.build(path, "csv", n_labeled=60, n_test=12, classes=["zero", "one", "two"], seed=1, large_fraction=0.1)
    return path


@pytest.fixture(scope="session")
def folder_data(tmp_path_factory) -> Path:
    """A small Dogs vs Cats-layout data set (2 digit classes)."""
    path = tmp_path_factory.mktemp("folder_data") / "data"
    demo_data.build(path, "folders", n_labeled=40, n_test=10, classes=["one", "seven"], seed=1, large_fraction=0.0)
    return path


def write_test_table(path: Path, n: int, unusable: tuple[int, ...] = ()) -> pd.DataFrame:
    """test.csv as the split stage writes it (id, path, usable): n images, every one readable but the `unusable` rows."""
    table = pd.DataFrame({"id": [f"t{i}" for i in range(n)], "path": [f"test/t{i}.jpg" for i in range(n)],
                          "usable": [i not in unusable for i in range(n)]})
    table.to_csv(path, index=False)
    return table


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (hidden ones included), by relative path."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@contextlib.contextmanager
def restored_afterwards(path: Path) -> Iterator[bytes]:
    """Let a test change a file; put back its bytes and its mtime afterwards, so no later test (or rerun trigger)
    sees the change. Yields the original bytes."""
    original, stat = path.read_bytes(), path.stat()
    try:
        yield original
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def write_override(path: Path, **sections) -> Path:
    """A small recipe file to pass after the main one (`--configfile main.yaml override.yaml`)."""
    path.write_text(yaml.safe_dump(sections))
    return path


def build_user_data(path: Path, recipe: Path) -> Path:
    """The data set a recipe's `demo:` section describes, built by hand and then made a user's own: no demo marks."""
    keys = yaml.safe_load(recipe.read_text())
    spec = keys["demo"]
    demo_data.build(path, keys["data"]["layout"], spec["n_labeled"], spec["n_test"], spec.get("classes"), spec["seed"],
               spec["large_fraction"])
    for mark in (demo_folder.OWNER_MARKER, demo_folder.BUILT_MARKER):
        (path / mark).unlink()
    return path


def recipe_for_user_data(recipe: Path, destination: Path, data_dir: Path) -> Path:
    """`recipe` without its `demo:` section, reading `data_dir` as it is."""
    keys = yaml.safe_load(recipe.read_text())
    del keys["demo"]
    destination.write_text(yaml.safe_dump({**keys, "data_dir": str(data_dir)}))
    return destination


def copy_workflow(destination: Path) -> Path:
    """The workflow's own files, copied so a test may edit code without touching the repository."""
    destination.mkdir(parents=True, exist_ok=True)
    for file in ("Snakefile", "environment.yml"):  # each rule names environment.yml as its software (`conda:`)
        shutil.copy(REPO / file, destination)
    for folder in ("rules", "config", "pipeline"):
        shutil.copytree(REPO / folder, destination / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def same_state(a: dict, b: dict) -> bool:
    """Two state dicts with the same keys and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


class Interrupted(Exception):
    pass


class InterruptedInEpoch:
    """Batches that raise part-way through epoch `epoch`, as a killed job would stop."""

    def __init__(self, batches, epoch: int):
        self.batches, self.epoch, self.epochs_started = batches, epoch, 0
        self.generator = batches.generator
        self.sampler = getattr(batches, "sampler", None)  # a DistributedSampler is reseeded per epoch too

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        self.epochs_started += 1
        for index, batch in enumerate(self.batches):
            if self.epochs_started - 1 == self.epoch and index == 1:
                raise Interrupted
            yield batch


def tiny_problem(n=64, batch_size=16):
    """A linearly separable 2-class problem on 8 features, a linear model for it, and its train / valid batches."""
    torch.manual_seed(0)
    x = torch.randn(n, 8)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(8, 2), nn.LogSoftmax(dim=1))
    return model, TensorBatches(x, y, batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)), \
        TensorBatches(x, y, batch_size)


def train_resumably(model, train, valid, fits: list[dict], resume_path: Path, key: str, seed: int = 42):
    """A stage's training as the stages run it: the recipe's fits with a resume point, deleted once they finish."""
    log = EpochLog(None)
    resume = ResumePoint(resume_path, key, model, log)
    run_fits(Phase(name="t", model=model, train_batches=train, valid_batches=valid, device=torch.device("cpu"), log=log,
                   seed=seed, resume=resume), fits)
    resume.finish()
    return model


class ReferenceRun(NamedTuple):
    out: Path             # its out_dir
    work: Path            # the working directory it ran in
    recipe: Path          # the recipe it ran (the micro recipe without `demo:`)
    data: Path            # its data_dir, a user's own
    data_checksums: dict  # of every file in data_dir before the run


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory) -> ReferenceRun:
    """The reference run: the micro recipe's images built by hand as a user's own data (no demo marks) in a folder
    named with shell-hostile characters, run end to end with the micro recipe minus its `demo:` section. Runs of
    the micro recipe itself, whose demo builder makes the very same images, must give the same results."""
    root = tmp_path_factory.mktemp("micro_reference")
    micro = CONFIGS / "micro_csv.yaml"
    data = build_user_data(root / "my data 'with' \"quotes\"; and $dollars", micro)
    data_checksums = checksums(data)
    recipe = recipe_for_user_data(micro, root / "my_recipe.yaml", data)
    result = snakemake(REPO, root / "work", configfiles=[recipe])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return ReferenceRun(root / "work" / "out", root / "work", recipe, data, data_checksums)


@pytest.fixture(scope="session")
def csv_run(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny recipe's single-split run: (its copy of the workflow, its working directory). The workflow tests edit
    that copy's code; the bundle tests package the run."""
    root = tmp_path_factory.mktemp("csv_run")
    workflow, workdir = copy_workflow(root / "repo"), root / "my work dir; 'quoted'"  # paths reach shells quoted
    result = snakemake(workflow, workdir, configfiles=[CONFIGS / "tiny_csv.yaml"], env=params_audit(workdir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workflow, workdir


@pytest.fixture(scope="session")
def kfold_run(tmp_path_factory) -> Path:
    """A real 3-fold run of the K-fold test recipe (its working directory): the K-fold tests read it, and the Slurm
    test compares its own run with it."""
    work = tmp_path_factory.mktemp("kfold_run")
    result = snakemake(REPO, work, configfiles=[CONFIGS / "kfold_csv.yaml"], env=params_audit(work))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work


@pytest.fixture(scope="session")
def blend_run(tmp_path_factory) -> Path:
    """A real two-member blend over 2 folds with a pseudo-label round (its working directory): the blend tests read
    it, and the Slurm test compares its own run of member a's folds with it."""
    work = tmp_path_factory.mktemp("blend_run")
    recipes = [CONFIGS / name for name in ("kfold_csv.yaml", "blend_csv.yaml", "pseudo_csv.yaml")]
    result = snakemake(REPO, work, configfiles=recipes, env=params_audit(work))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work


# Cores per Snakemake run, and threads per torch stage: one. `make test` runs two workers on two cores, and two runs
# of 2 threads each (4 threads on 2 cores) took 1.76x as long as two runs of 1 thread each (micro recipe, two at
# once: 231 s against 131 s, measured 2026-12-02): torch's threads spin waiting for each other on a shared core.
TEST_CORES = 1
torch.set_num_threads(TEST_CORES)  # and so do the stages a test runs in this process


def snakemake_command(workflow: Path, workdir: Path, *args: str, configfiles: list[Path] = ()) -> list[str]:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(workflow / "Snakefile"),
               "--directory", str(workdir), "--cores", str(TEST_CORES), *args]
    return command + ["--configfile", *map(str, configfiles)] if configfiles else command


def snakemake(workflow: Path, workdir: Path, *args: str, configfiles: list[Path] = (),
              env: dict | None = None) -> subprocess.CompletedProcess:
    """Snakemake in a subprocess; `env` adds to (or, with None values, removes from) this process's environment. A
    tracking store set in the environment is left out: every run logs to mlflow.db in its own working directory."""
    environment = {**os.environ, "MLFLOW_TRACKING_URI": None, **(env or {})}
    environment = {key: value for key, value in environment.items() if value is not None}
    return subprocess.run(snakemake_command(workflow, workdir, *args, configfiles=configfiles), capture_output=True,
                          text=True, timeout=900, env=environment)


def params_audit(workdir: Path) -> dict:
    """The environment under which each stage records which keys of its slice it read (pipeline.cli.audit_reads)."""
    return {"LESSON2_PARAMS_AUDIT": str(workdir / "params_audit")}


def unread_params(workdir: Path) -> dict[str, list[str]]:
    """Per stage that ran under params_audit: the keys its rule passed that none of its jobs read."""
    passed, read = {}, {}
    for record in map(json.loads, map(Path.read_text, (workdir / "params_audit").glob("*.json"))):
        passed.setdefault(record["stage"], set()).update(record["passed"])
        read.setdefault(record["stage"], set()).update(record["read"])
    return {stage: sorted(keys - read[stage]) for stage, keys in passed.items()}


@pytest.fixture(scope="session")
def resnet34_hub(tmp_path_factory) -> Path:
    """A TORCH_HOME whose hub cache holds a file where torchvision looks for resnet34's ImageNet weights (random
    weights of the right shapes: what is checked before planning is that the file is there and fits)."""
    from torchvision import models

    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    url = models.ResNet34_Weights.DEFAULT.url
    torch.save(models.resnet34().state_dict(), home / "hub" / "checkpoints" / url.rsplit("/", 1)[-1])
    return home


@pytest.fixture(scope="session")
def convnext_hf_home(tmp_path_factory) -> Path:
    """An HF_HOME whose hub cache holds timm's ConvNeXt-Tiny (in22k -> 1k) as huggingface_hub lays a download out,
    with random weights of the right shapes."""
    import timm
    from safetensors.torch import save_file

    home = tmp_path_factory.mktemp("hf_home")
    repo = home / "hub" / "models--timm--convnext_tiny.fb_in22k_ft_in1k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    model = timm.create_model("convnext_tiny.fb_in22k_ft_in1k", pretrained=False)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, snapshot / "model.safetensors")
    return home


# The expensive shared runs. Under pytest-xdist (`make test` runs 2 workers) every worker would make its own copy of
# a fixture it needs, so the tests of each run form one xdist group and run on one worker.
SHARED_RUNS = ("kfold_run", "blend_run", "micro_run", "csv_run", "sweep_run")


def shared_run(item) -> str | None:
    if item.get_closest_marker("slurm"):  # the Slurm run asks for blend_run inside its fixture (tests/test_slurm.py)
        return "blend_run"
    return next((name for name in SHARED_RUNS if name in item.fixturenames), None)


def schedule_rank(item) -> int:
    """The order the tests are handed out in (xdist keeps it with --no-loadscope-reorder). The Slurm tests first:
    their cluster run, mostly waiting between job-status polls, runs while the local blend run they compare it with
    computes (tests/test_slurm.py). Then the long shared runs and the long single runs, so that no worker is left
    with one of them at the end; the many short tests fill in."""
    run = shared_run(item)
    if item.get_closest_marker("slurm"):
        return 0
    if run in ("kfold_run", "blend_run", "micro_run", "sweep_run"):
        return {"blend_run": 1, "kfold_run": 1, "micro_run": 2, "sweep_run": 2}[run]
    if item.get_closest_marker("workflow") and run is None:
        return 3
    return 4 if run == "csv_run" else 5


# The suite's workflow runs, bundles and copies peak at about 6 GB in the temporary folder (2026-12-07: `df` sampled
# every 5 s through .ci/run); with less free, tests fail one by one with "No space left on device".
NEEDED_FREE_GB = 10


def pytest_sessionstart(session):
    folder = tempfile.gettempdir()
    free_gb = shutil.disk_usage(folder).free / 1e9
    if free_gb < NEEDED_FREE_GB and not hasattr(session.config, "workerinput"):
        pytest.exit(f"only {free_gb:.1f} GB free in {folder}; the suite writes up to about 6 GB there, so free "
                    f"{NEEDED_FREE_GB} GB (old /tmp/pytest-of-*/ folders, stale clones) and run again", returncode=1)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        if run := shared_run(item):
            item.add_marker(pytest.mark.xdist_group(run))
    items.sort(key=schedule_rank)


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
