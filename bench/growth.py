"""Benchmark 6 - growth: resize, precompute and TTA at N and 4N images, each run as its real stage command in a
subprocess. Time should grow about 4x; peak memory (max RSS of the stage process) should not grow with N:
images are processed in chunks, activations stream into a memory-mapped .npy.

    python bench/growth.py [--n 300] [--arch resnet18] [--size 64]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import make_images, report
from pipeline.data.dataset import read_split
from pipeline.models.classifier import build_classifier, save_checkpoint
from pipeline.stages import demo_data

PYTHON = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def run_stage(module: str, *args: str) -> tuple[float, float]:
    """(seconds, peak MiB) of `python -m pipeline.stages.<module> ...` in a fresh process."""
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.execve(PYTHON, [PYTHON, "-m", f"pipeline.stages.{module}", *args], ENV)
    _, status, usage = os.wait4(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"pipeline.stages.{module} failed"
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def measure(work: Path, n: int, arch: str, size: int) -> dict:
    data = make_images(work / f"data_{n}", n, demo_data.ImageSizes(short=(375, 376), aspect=(4 / 3, 4 / 3)), 0.0)
    out = work / f"out_{n}"
    quiet = dict(stdout=subprocess.DEVNULL)
    subprocess.run([PYTHON, "-m", "pipeline.stages.split", "--data-dir", str(data), "--split-csv", str(out / "split.csv"),
                    "--test-csv", str(out / "test.csv"), "--class-counts", str(out / "cc.csv"),
                    "--params", json.dumps({"layout": "csv"})], env=ENV, check=True,
                   **quiet)
    figures = {"resize": run_stage("resize", "--data-dir", str(data), "--out-dir", str(out / "resized"),
                                   "--params", json.dumps({"layout": "csv", "shorter_side": 340}))}
    params = json.dumps({"arch": arch, "weights": "none", "size": size, "batch_size": 32, "num_workers": 0,
                         "device": "cpu", "n_aug": 2})
    figures["precompute"] = run_stage("precompute", "--split-csv", str(out / "split.csv"), "--test-csv",
                                      str(out / "test.csv"), "--cache-dir", str(out / "resized"), "--out-dir",
                                      str(out / "activations"), "--params", params)
    _, _, classes = read_split(out / "split.csv")
    model = build_classifier(arch, "none", len(classes))
    save_checkpoint(model, out / "model.pt", {"classes": classes, "arch": arch, "size": size, "ps": [0.25, 0.5],
                                              "xtra_fc": [512]})
    figures["tta"] = run_stage("tta", "--split-csv", str(out / "split.csv"), "--test-csv", str(out / "test.csv"),
                               "--cache-dir", str(out / "resized"), "--checkpoint", str(out / "model.pt"),
                               "--out-dir", str(out / "tta"), "--metrics", str(out / "metrics.json"),
                               "--params", params)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="at most 359: the digits data set has 1,797 images")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_growth")
    args = parser.parse_args()
    small, large = measure(args.work, args.n, args.arch, args.size), measure(args.work, 4 * args.n, args.arch, args.size)
    figures, worst_memory_growth = {}, 0.0
    for stage in small:
        (t1, m1), (t4, m4) = small[stage], large[stage]
        figures[stage] = {"seconds": [round(t1, 1), round(t4, 1)], "time_ratio": round(t4 / t1, 2),
                          "peak_mib": [round(m1), round(m4)], "memory_ratio": round(m4 / m1, 2)}
        worst_memory_growth = max(worst_memory_growth, m4 / m1)
    report("growth", {"n": [args.n, 4 * args.n], **figures}, worst_memory_growth,
           "peak memory ratio ~1 (time ratio <= ~4)", worst_memory_growth < 1.15)


if __name__ == "__main__":
    main()
