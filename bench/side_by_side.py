"""Two workflow runs at once, as `make test`'s two workers run them: what the threads per run cost on a small machine.

    python bench/side_by_side.py [--recipe tests/configs/micro_csv.yaml] [--cores 2 1]

For each `--cores` value, two runs of the recipe start together in fresh folders (each Snakemake with that many
cores, so each torch stage with that many threads) and the wall time until both end is printed, then the ratio to
the first value's. On 2 cores, 2 cores per run puts 4 busy threads on 2 cores.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def two_at_once(recipe: Path, cores: int) -> float:
    with tempfile.TemporaryDirectory(prefix="side_by_side-") as folder:
        started = time.perf_counter()
        runs = [subprocess.Popen([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                                  "--directory", f"{folder}/run{index}", "--cores", str(cores),
                                  "--configfile", str(recipe)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for index in range(2)]
        if any(run.wait() for run in runs):
            raise SystemExit(f"a run with --cores {cores} failed")
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=REPO / "tests" / "configs" / "micro_csv.yaml")
    parser.add_argument("--cores", type=int, nargs="+", default=[2, 1])
    args = parser.parse_args()
    seconds = {}
    for cores in args.cores:
        seconds[cores] = two_at_once(args.recipe, cores)
        print(f"two runs at once, --cores {cores} each: {seconds[cores]:.1f} s "
              f"({seconds[cores] / seconds[args.cores[0]]:.2f}x --cores {args.cores[0]})", flush=True)


if __name__ == "__main__":
    main()
