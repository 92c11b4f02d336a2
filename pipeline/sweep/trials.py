"""A sweep's trials as members of the workflow: the members file Snakemake reads with the recipe, Snakemake asked for
the trials' scores, and what it ran for each."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.io import read_json, write_text

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "Snakefile"
PROFILES = REPO / "profiles"
# The torch stages: with P trials side by side on cores, each job takes cores / P threads instead of all of them.
TORCH_RULES = ("precompute", "train_head", "finetune", "lr_find", "tta")
OUT_DIR_IN_USE = re.compile(r"out_dir .* is in use by another run \(pid \d+[^)]*\)")
WAIT_FOR_OUT_DIR = 10  # seconds between tries while another run holds the out_dir
JOB = re.compile(r"^(?:local)?rule (\w+):$")
WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")


def member(study: str, number: int) -> str:
    """The member a trial is: <study>_t<number>, unique across the studies of one out_dir."""
    return f"{study}_t{number}"


def early_score_file(out_dir: str, name: str) -> Path:
    return Path(out_dir) / "members" / name / "sweep" / "early_score.json"


def score_file(out_dir: str, name: str) -> Path:
    return Path(out_dir) / "members" / name / "sweep" / "score.json"


def profile_dir(profile: str) -> Path | None:
    """A --profile as Snakemake finds it: a folder with config.yaml, as given or under the workflow's profiles/."""
    for candidate in (Path(profile), PROFILES / profile):
        if (candidate / "config.yaml").is_file():
            return candidate
    return None


def write_members(path: Path, members: dict[str, dict]) -> None:
    """The configfile fragment that makes every trial a member (read after the recipe's own files)."""
    header = "# Written by python -m pipeline.sweep: this study's trials as members of the recipe.\n"
    write_text(header + yaml.safe_dump({"members": members}, sort_keys=False), path)


@dataclass
class Snakemake:
    """How the sweep runs the workflow: the recipe's files and the members file, where, on what."""
    configfiles: list[str]
    members_file: Path
    log_dir: Path
    cores: str = "all"
    profile: str | None = None
    parallel: int = 1
    extra: list[str] = field(default_factory=list)
    runs: int = 0

    def command(self, targets: list[str]) -> list[str]:
        # --nolock: the out_dir's own run lock (pipeline.workflow.run_lock) keeps one run per out_dir and dies with
        # its holder, while Snakemake's lock in .snakemake/ outlives a killed sweep and would stop its resumption.
        # --rerun-incomplete: the jobs a killed sweep left half done are redone.
        command = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--keep-going", "--nolock",
                   "--rerun-incomplete", "--configfile", *self.configfiles, str(self.members_file)]
        if self.profile:
            command += ["--profile", str(profile_dir(self.profile))]
        else:
            command += ["--cores", self.cores]
            if self.parallel > 1:
                cores = os.cpu_count() if self.cores == "all" else int(self.cores)
                threads = max(1, cores // self.parallel)
                command += ["--set-threads", *(f"{rule}={threads}" for rule in TORCH_RULES)]
        return command + self.extra + ["--", *targets]

    def run(self, targets: list[str], label: str) -> tuple[int, Path, float]:
        """Snakemake for `targets`, its output in a log of its own; (exit status, log, seconds). While another run
        holds the out_dir (another study's sweep, say) it waits its turn."""
        self.runs += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{self.runs:03d}_{label}.log"
        started, said = time.perf_counter(), False
        while True:
            with open(log, "w") as output:
                status = subprocess.run(self.command(targets), stdout=output, stderr=subprocess.STDOUT).returncode
            if status == 0 or (in_use := OUT_DIR_IN_USE.search(log.read_text(errors="replace"))) is None:
                return status, log, time.perf_counter() - started
            if not said:
                print(f"waiting: {in_use.group(0)}", flush=True)
                said = True
            time.sleep(WAIT_FOR_OUT_DIR)


def jobs_by_member(log: Path) -> dict[str, Counter]:
    """The jobs a Snakemake log shows it ran, counted by rule for each member (from each job's wildcards)."""
    ran: dict[str, Counter] = {}
    rule = None
    for line in log.read_text(errors="replace").splitlines():
        if match := JOB.match(line):
            rule = match.group(1)
        elif rule and (match := WILDCARDS.match(line)):
            wildcards = dict(part.split("=", 1) for part in match.group(1).split(", ") if "=" in part)
            if "member" in wildcards:
                ran.setdefault(wildcards["member"], Counter())[rule] += 1
            rule = None
    return ran


def read_score(path: Path, key: str) -> float | None:
    try:
        return float(read_json(path)[key])
    except (OSError, ValueError, KeyError):
        return None


def read_json_or_none(path: Path) -> dict | None:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def blend(recipe: dict, out_dir: str, names: list[str], folder: Path, log: Path) -> dict | None:
    """The blend stage on the members `names` (their out-of-fold predictions, already computed), into `folder`:
    its weights fitted without each fold, as the workflow's blend. Returns its cv_metrics plus where it is."""
    from pipeline.recipe.defaults import filled
    from pipeline.workflow.slices import stage_slice

    command = [sys.executable, "-m", "pipeline.stages.blend", "--split-csv", str(Path(out_dir) / "split.csv"),
               "--members", *names, "--member-dirs", *(str(Path(out_dir) / "members" / name) for name in names),
               "--out-dir", str(folder), "--params", stage_slice("blend", filled(recipe))]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as output:
        environment = {**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
        status = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=environment).returncode
    metrics = read_json_or_none(folder / "cv_metrics.json")
    if status or metrics is None:
        print(f"the blend of {names} failed; see {log}:\n{failure_tail(log)}", flush=True)
        return None
    return {"logloss": metrics["oof_logloss"], "folder": str(folder), "members": names}


def failure_tail(log: Path, lines: int = 15) -> str:
    """The end of a Snakemake log, where it says what failed."""
    text = log.read_text(errors="replace").splitlines()
    errors = [line for line in text if line.startswith(("Error in rule", "error:", "    error:"))]
    return "\n".join((errors or text)[-lines:])
