"""Benchmark - what MLflow tracking costs a demo run: at most 5 s of wall time (issue 28).

Runs the demo recipe end to end in a scratch folder (its own mlflow.db there: the first logging creates the store),
then alternates the same rerun of the stages after TTA (`-R calibrate`: calibrate, interpret, report_tables,
submission) with tracking on and off (`tracking: {uri: none}`), so that both do the same work but the tracking rule.
Reports the tracking job's own wall time (Snakemake's benchmark file) for the first run, a rerun, and the median
difference in the whole run's wall time; and checks that a no-op rerun logs nothing.

    python bench/tracking.py [--repeats 3] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import report

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "config" / "demo.yaml"


def snakemake(workdir: Path, *args: str, configfiles: list[Path] = ()) -> float:
    """One `snakemake --cores all` in workdir; its wall time in seconds."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--cores", "all", "--configfile", str(DEMO), *map(str, configfiles), *args]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(result.stdout[-3000:] + result.stderr[-3000:])
    return time.perf_counter() - started


def track_seconds(workdir: Path) -> float:
    """The tracking job's wall time, as Snakemake's `benchmark:` file recorded it."""
    return float((workdir / "outputs" / "demo" / "benchmarks" / "track.tsv").read_text().splitlines()[1].split()[0])


def logged_runs(workdir: Path) -> int:
    from mlflow import MlflowClient

    store = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    return len(store.search_runs([e.experiment_id for e in store.search_experiments()], "tags.run_kind = 'workflow'"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="a scratch folder (default: a new temporary one)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_tracking_"))
    off = workdir / "tracking_off.yaml"
    off.write_text("tracking: {uri: none}\n")

    demo_seconds = snakemake(workdir)
    first_track = track_seconds(workdir)
    noop_seconds = snakemake(workdir)
    noop_logged_nothing = logged_runs(workdir) == 1
    on, off_times, reruns = [], [], []
    for _ in range(args.repeats):  # alternated, so a machine that slows down mid-way slows both alike
        on.append(snakemake(workdir, "-R", "calibrate"))
        reruns.append(track_seconds(workdir))
        off_times.append(snakemake(workdir, "-R", "calibrate", configfiles=[off]))
    added = statistics.median(on) - statistics.median(off_times)
    figures = {"demo_seconds": round(demo_seconds, 1), "first_track_job_seconds": first_track,
               "rerun_track_job_seconds": reruns, "noop_seconds": round(noop_seconds, 2),
               "noop_logged_nothing": noop_logged_nothing,
               "rerun_with_tracking_seconds": [round(t, 1) for t in on],
               "rerun_without_tracking_seconds": [round(t, 1) for t in off_times],
               "median_added_seconds": round(added, 2), "runs_logged": logged_runs(workdir)}
    worst = max(first_track, *reruns, added)
    report("tracking", figures, worst, "<= 5 s added to a demo run", worst <= 5 and noop_logged_nothing)


if __name__ == "__main__":
    main()
