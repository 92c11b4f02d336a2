"""What a stage process pays before it does any work: the wall time of importing each stage's module, against a bare
`import torch`.

    python bench/imports.py [--repeat 3] [--tree PATH]

Each stage module is imported in a fresh interpreter, `--repeat` times, alternating the modules so that a busy
machine slows them all alike; the median is printed, its ratio to a bare `import torch` timed in the same loop
(the target: a torch stage within 1.5x), and what `-X importtime` says the three costliest top-level imports were.
A bare `import torch, torchvision` is timed beside it: the floor of every stage that reads images, whose transforms
and models come from torchvision. `--tree` points at another checkout (e.g. a `git worktree` of an older commit) to
compare, in one run on one machine, with this one's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
STAGES = sorted(path.stem for path in (HERE / "pipeline/stages").glob("[!_]*.py"))
# Rows timed in the same loop as the stages, in the same environment whatever the tree: what the ratios divide by.
BARE = {"torch (bare)": "import torch", "torch+torchvision (bare)": "import torch, torchvision"}
BASELINE = "torch (bare)"


def dotted(tree: Path, stage: str) -> str | None:
    """The stage's module in `tree`: pipeline.stages.<stage>, or pipeline.<stage> in a checkout before stages/."""
    for name in (f"pipeline.stages.{stage}", f"pipeline.{stage}"):
        if (tree / (name.replace(".", "/") + ".py")).is_file():
            return name
    return None


def code_of(tree: Path, row: str) -> str:
    return BARE[row] if row in BARE else f"import {dotted(tree, row)}"


def import_seconds(tree: Path, code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)})
    return time.perf_counter() - started


def costliest(tree: Path, code: str, n: int = 3) -> str:
    """The n outside packages with the largest cumulative import time (-X importtime: each package's outermost
    import includes everything it imported)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=tree,
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


def timed_rows(trees: dict[str, Path], stages: list[str], repeat: int) -> dict[tuple[str, str], list[float]]:
    """{(tree, row): seconds of each round}; each round imports every row once, the bare rows once for all trees."""
    seconds: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeat):
        for row in BARE:
            seconds.setdefault(("", row), []).append(import_seconds(HERE, BARE[row]))
        for stage in stages:
            for name, tree in trees.items():
                seconds.setdefault((name, stage), []).append(import_seconds(tree, code_of(tree, stage)))
    return seconds


def print_table(trees: dict[str, Path], stages: list[str], seconds: dict[tuple[str, str], list[float]]) -> None:
    torch_alone = statistics.median(seconds["", BASELINE])
    print(f"{'stage':<25}" + "".join(f"{name + ' (s)':>12}{'x torch':>9}" for name in trees)
          + "   costliest imports (this tree)")
    for row in [*BARE, *stages]:
        medians = [statistics.median(seconds["" if row in BARE else name, row]) for name in trees]
        figures = "".join(f"{median:>12.2f}{median / torch_alone:>9.2f}" for median in medians)
        print(f"{row:<25}{figures}   {costliest(HERE, code_of(HERE, row))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tree", type=Path, help="another checkout to time in the same run")
    args = parser.parse_args()
    trees = {"this": HERE, **({"other": args.tree.resolve()} if args.tree else {})}
    stages = [stage for stage in STAGES if all(dotted(tree, stage) for tree in trees.values())]
    print_table(trees, stages, timed_rows(trees, stages, args.repeat))


if __name__ == "__main__":
    main()
