"""The K-fold demo swept (issue 35's figures): config/sweep_demo.yaml, 8 trials, 2 side by side, SIGKILLed once while
a trial of the second batch fine-tunes, then resumed with the same command; then what each trial ran, the pruned ones,
the best trial, its confirmation run on a fresh seed and the recipe's own values (trial 0), and the wall time.

    python bench/sweep_demo.py [--trials 8] [--parallel 2] [--out outputs/sweep_bench]

Run it alone on the machine: the trials' jobs share its cores.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

import common  # noqa: F401  (puts the repository on sys.path)

REPO = Path(__file__).resolve().parents[1]
STUDY = "bench"


def command(recipe: list[str], trials: int, parallel: int) -> list[str]:
    return [sys.executable, "-m", "pipeline.sweep", "--configfile", *recipe, "--space",
            str(REPO / "config" / "sweep_demo.yaml"), "--trials", str(trials), "--parallel", str(parallel),
            "--study", STUDY]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--out", default="outputs/sweep_bench")
    args = parser.parse_args()
    override = Path(tempfile.mkdtemp()) / "out.yaml"
    override.write_text(f"out_dir: {args.out}\n")
    recipe = [str(REPO / "config" / "demo.yaml"), str(REPO / "config" / "demo_kfold.yaml"), str(override)]
    folder = Path(args.out) / "sweep" / STUDY
    started = time.perf_counter()
    first = subprocess.Popen(command(recipe, args.trials, args.parallel), start_new_session=True)
    fold_log = Path(args.out) / "members" / f"{STUDY}_t2" / "folds" / "0" / "logs"
    while not any(fold_log.glob("finetune_*.log")) and first.poll() is None:
        time.sleep(1)
    killed_at = time.perf_counter() - started
    if first.poll() is not None:
        raise SystemExit(f"the sweep ended (status {first.returncode}) before trial 2 fine-tuned")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    print(f"--- killed after {killed_at:.0f} s (trial 2 fine-tuning); resuming", flush=True)
    subprocess.run(command(recipe, args.trials, args.parallel), check=True)
    wall = time.perf_counter() - started
    table = pd.read_csv(folder / "trials.csv")
    print(table.drop(columns=["member"]).to_markdown(index=False, floatfmt=".4f"))
    print(f"\nwall time {wall:.0f} s ({wall / 60:.1f} min) with one kill at {killed_at:.0f} s; "
          f"{(table['state'] == 'PRUNED').sum()} pruned, {(table['state'] == 'FAIL').sum()} interrupted")


if __name__ == "__main__":
    main()
