"""Shared by the benchmarks: data made by the demo builder at chosen sizes, a timer, and a result line."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/<name>.py` from anywhere

from pipeline.stages import demo_data  # noqa: E402


def make_images(folder: Path, n: int, sizes: demo_data.ImageSizes, large_fraction: float, seed: int = 0) -> Path:
    """A Kaggle-layout data set of n labelled + n//4 test images; reused when it already exists."""
    if not (folder / "labels.csv").exists():
        demo_data.build(folder, "csv", n_labeled=n, n_test=max(1, n // 4), seed=seed, large_fraction=large_fraction,
                   sizes=sizes)
    return folder


def best_of(repeats: int, function) -> float:
    """The fastest of `repeats` timed calls, in seconds: the least disturbed by the rest of the machine."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def machine() -> str:
    return f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip()


def report(name: str, figures: dict, ratio: float, target: str, met: bool) -> None:
    print(json.dumps({"benchmark": name, **figures, "ratio": round(ratio, 3), "target": target, "met": met,
                      "machine": machine()}))
    print(f"{name}: ratio {ratio:.2f} (target {target}) {'MET' if met else 'MISSED'}")
