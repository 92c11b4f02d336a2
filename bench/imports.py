"""What a stage process pays before it does any work: the wall time of importing each stage's module.

    python bench/imports.py [--repeat 3] [--tree PATH]

Each stage module is imported in a fresh interpreter, `--repeat` times, alternating the modules so that a busy
machine slows them all alike; the median is printed, with what `-X importtime` says the three costliest top-level
imports were. `--tree` points at another checkout (e.g. a `git worktree` of an older commit) to compare, in one run
on one machine, with this one's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

STAGES = sorted(path.stem for path in (Path(__file__).resolve().parents[1] / "pipeline/stages").glob("[!_]*.py"))


def dotted(tree: Path, stage: str) -> str | None:
    """The stage's module in `tree`: pipeline.stages.<stage>, or pipeline.<stage> in a checkout before stages/."""
    for name in (f"pipeline.stages.{stage}", f"pipeline.{stage}"):
        if (tree / (name.replace(".", "/") + ".py")).is_file():
            return name
    return None


def import_seconds(tree: Path, module: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {dotted(tree, module)}"], check=True, cwd=tree,
                   env={**os.environ, "PYTHONPATH": str(tree)})
    return time.perf_counter() - started


def costliest(tree: Path, module: str, n: int = 3) -> str:
    """The n outside packages with the largest cumulative import time (-X importtime: each package's outermost
    import includes everything it imported)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {dotted(tree, module)}"], cwd=tree,
                            env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, check=True)
    totals: dict[str, int] = {}
    for line in result.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            package = parts[2].strip().split(".")[0]
            if package != "pipeline":
                totals[package] = max(totals.get(package, 0), int(parts[1]))
    top = sorted(totals.items(), key=lambda item: -item[1])[:n]
    return ", ".join(f"{name} {micros / 1e6:.1f}s" for name, micros in top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tree", type=Path, help="another checkout to time in the same run")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    trees = {"this": here, **({"other": args.tree.resolve()} if args.tree else {})}
    modules = [m for m in STAGES if all(dotted(tree, m) for tree in trees.values())]
    seconds = {(name, m): [] for name in trees for m in modules}
    for _ in range(args.repeat):
        for module in modules:
            for name, tree in trees.items():
                seconds[name, module].append(import_seconds(tree, module))
    header = f"{'stage':<21}" + "".join(f"{name + ' (s)':>12}" for name in trees) + "   costliest imports (this tree)"
    print(header)
    for module in modules:
        medians = "".join(f"{statistics.median(seconds[name, module]):>12.2f}" for name in trees)
        print(f"{module:<21}{medians}   {costliest(here, module)}")


if __name__ == "__main__":
    main()
