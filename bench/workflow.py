"""Benchmark 5 - workflow overhead: a no-op `snakemake` (everything up to date) must take < 3 s, and a TTA-parameter
edit must plan only TTA and the jobs after it (calibrate, interpret, report_tables, submission, track). Runs the
micro test recipe once in a scratch folder first.

    python bench/workflow.py
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import report

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import planned_jobs  # noqa: E402


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--cores", "2", "--configfile", str(REPO / "tests" / "configs" / "micro_csv.yaml"), *args]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench_workflow_"))
    assert snakemake(workdir).returncode == 0
    times = []
    for _ in range(3):
        started = time.perf_counter()
        result = snakemake(workdir)
        times.append(time.perf_counter() - started)
        assert "Nothing to be done" in result.stdout + result.stderr
    override = workdir / "tta.yaml"
    override.write_text("tta: {n_aug: 3}\n")
    plan = planned_jobs(snakemake(workdir, "-n", "--configfile", str(REPO / "tests" / "configs" / "micro_csv.yaml"),
                                  str(override)).stdout)
    only_tta = set(plan) - {"all"} == {"tta", "calibrate", "interpret", "report_tables", "submission", "track"}
    report("workflow", {"noop_seconds": round(min(times), 2), "tta_edit_plans": sorted(plan)}, min(times), "< 3 s",
           min(times) < 3 and only_tta)


if __name__ == "__main__":
    main()
