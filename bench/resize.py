"""Benchmark 3 - the resize stage vs a naive single-process Pillow loop applying the same rule.

Data: mostly 500x375 JPEGs plus some 2000-3000 px ones (the demo builder at chosen sizes). Both write the same
files (same sizes); the stage runs with all cores (worker processes). Target: >= 3x on 2 cores.

    python bench/resize.py [--n 400] [--large-fraction 0.1] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from common import best_of, make_images, report
from pipeline.data.dataset import all_images
from pipeline.data.resizing import resized_size
from pipeline.stages import demo_data
from pipeline.stages.resize import resize_cache


def naive_loop(data_dir: Path, out_dir: Path, paths: list[str], shorter_side: int, quality: int) -> None:
    for path in paths:
        image = Image.open(data_dir / path).convert("RGB")
        image = image.resize(resized_size(*image.size, shorter_side), Image.BILINEAR)
        (out_dir / path).parent.mkdir(parents=True, exist_ok=True)
        image.save(out_dir / path, quality=quality)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--large-fraction", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_resize")
    args = parser.parse_args()
    sizes = demo_data.ImageSizes(short=(375, 376), large_short=(2000, 3000), aspect=(4 / 3, 4 / 3))
    data = make_images(args.work / f"data_{args.n}_{args.large_fraction}", args.n, sizes, args.large_fraction)
    paths = all_images(data, "csv", ".jpg")["path"].tolist()
    naive_dir, stage_dir = args.work / "naive", args.work / "stage"

    def run_naive():
        shutil.rmtree(naive_dir, ignore_errors=True)
        naive_loop(data, naive_dir, paths, 340, 90)

    def run_stage(draft=True):
        shutil.rmtree(stage_dir, ignore_errors=True)
        resize_cache(str(data), str(stage_dir), "csv", ".jpg", 340, 90, args.threads, draft=draft)

    naive_s = best_of(2, run_naive)
    no_draft_s = best_of(2, lambda: run_stage(draft=False))
    stage_s = best_of(2, run_stage)
    same_sizes = all(Image.open(naive_dir / p).size == Image.open(stage_dir / p).size for p in paths)
    worst = max(float(np.abs(np.asarray(Image.open(naive_dir / p), np.int16) -
                             np.asarray(Image.open(stage_dir / p), np.int16)).mean()) for p in paths)
    ratio = naive_s / stage_s
    report("resize", {"images": len(paths), "threads": args.threads, "naive_images_per_s": round(len(paths) / naive_s, 1),
                      "stage_images_per_s": round(len(paths) / stage_s, 1),
                      "stage_without_draft_images_per_s": round(len(paths) / no_draft_s, 1), "same_sizes": same_sizes,
                      "worst_mean_abs_pixel_diff": round(worst, 2)}, ratio, ">= 3x", ratio >= 3 and same_sizes)


if __name__ == "__main__":
    main()
