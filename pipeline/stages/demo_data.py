"""Build the embedded demo data set from scikit-learn's bundled handwritten digits (no download).

Real images of a real task, laid out exactly like a Kaggle competition so the demo exercises the same code path
as a real run: RGB JPEGs of varied sizes and aspect ratios (mostly 150-600 px, a few over 1000 px so the size
histograms and the resize cache matter), class names as words, a hidden test split with `sample_submission.csv`,
and the hidden test labels in `solution.csv` (which no stage reads; the tests score the submission with it).
It writes only into a folder it creates itself or finds empty (see `pipeline/data/demo_folder.py`): pointed at a folder
that holds anyone else's files, it stops without touching them.

    python -m pipeline.stages.demo_data data/demo --layout csv --n-labeled 1000 --n-test 300
    python -m pipeline.stages.demo_data data/demo_folders --layout folders --classes zero one
"""
from __future__ import annotations

import argparse
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline import cli
from pipeline.data import demo_folder
from pipeline.data.demo_folder import DIGIT_NAMES, default_classes
from pipeline.io import atomic_path, write_csv, write_json
from pipeline.compute.parallel import map_chunks

@dataclass(frozen=True)
class ImageSizes:
    """Shorter side ranges (px, end exclusive) of ordinary and large images, and the long/short aspect range."""

    short: tuple[int, int] = (150, 600)
    large_short: tuple[int, int] = (1000, 1400)
    aspect: tuple[float, float] = (1.0, 1.6)


def render_digit(digit: np.ndarray, rng: np.random.Generator, large: bool,
                 sizes: ImageSizes = ImageSizes()) -> Image.Image:
    """Draw an 8x8 digit (values 0-16) as a colour photo-like JPEG source of random size and aspect ratio."""
    short = int(rng.integers(*sizes.large_short)) if large else int(rng.integers(*sizes.short))
    aspect = float(rng.uniform(*sizes.aspect))  # long side / short side
    width, height = (int(short * aspect), short) if rng.random() < 0.5 else (short, int(short * aspect))
    glyph_side = int(short * rng.uniform(0.55, 0.9))
    glyph = Image.fromarray((digit / 16 * 255).astype(np.uint8)).resize((glyph_side, glyph_side), Image.BILINEAR)
    mask = np.zeros((height, width), np.float32)
    # Like a photographer's subject, the digit sits inside the central square, so a centre crop keeps it whole.
    top = (height - short) // 2 + int(rng.integers(0, short - glyph_side + 1))
    left = (width - short) // 2 + int(rng.integers(0, short - glyph_side + 1))
    mask[top:top + glyph_side, left:left + glyph_side] = np.asarray(glyph, np.float32) / 255
    background = rng.uniform(0, 110, size=3)
    foreground = rng.uniform(150, 255, size=3)
    if rng.random() < 0.5:  # dark ink on light paper as often as the reverse
        background, foreground = 255 - background, 255 - foreground
    pixels = background + mask[..., None] * (foreground - background)
    pixels += rng.normal(0, 4, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _render_and_save(large_fraction: float, sizes: ImageSizes, jobs: list[tuple[np.ndarray, int, Path]]) -> list[Path]:
    for digit, seed, path in jobs:
        rng = np.random.default_rng(seed)
        image = render_digit(digit, rng, rng.random() < large_fraction, sizes)
        with atomic_path(path) as tmp:
            image.save(tmp, format="JPEG", quality=90)
    return [path for _, _, path in jobs]


def _write_images(digits: np.ndarray, paths: list[Path], rng: np.random.Generator, large_fraction: float,
                  sizes: ImageSizes) -> None:
    """Render in parallel; each image draws from its own seed so the result does not depend on the worker count."""
    seeds = rng.integers(0, 2**31, size=len(paths))
    jobs = [(digit, int(seed), path) for digit, seed, path in zip(digits, seeds, paths)]
    map_chunks(functools.partial(_render_and_save, large_fraction, sizes), jobs, os.cpu_count() or 1, "demo images")


def _pick(n_labeled: int, n_test: int, classes: list[str], rng: np.random.Generator):
    from sklearn.datasets import load_digits  # scikit-learn's 3 s of imports only where the digits are read

    digits = load_digits()
    wanted = [DIGIT_NAMES.index(name) for name in classes]
    pool = np.flatnonzero(np.isin(digits.target, wanted))
    if n_labeled + n_test > len(pool):
        raise ValueError(f"only {len(pool)} digits of classes {classes}; asked for {n_labeled}+{n_test}")
    chosen = rng.permutation(pool)[: n_labeled + n_test]
    labels = [DIGIT_NAMES[t] for t in digits.target[chosen]]
    return digits.images[chosen], labels


def build_csv_layout(out: Path, n_labeled: int, n_test: int, classes: list[str], seed: int,
                     large_fraction: float, sizes: ImageSizes = ImageSizes()) -> None:
    """Kaggle Dog Breed layout: labels.csv (id,breed), train/<id>.jpg, test/<id>.jpg, sample_submission.csv."""
    rng = np.random.default_rng(seed)
    images, labels = _pick(n_labeled, n_test, classes, rng)
    ids = [rng.bytes(16).hex() for _ in labels]  # Kaggle's ids are 32 hex digits
    paths = [out / ("train" if index < n_labeled else "test") / f"{image_id}.jpg" for index, image_id in enumerate(ids)]
    _write_images(images, paths, rng, large_fraction, sizes)
    write_csv(pd.DataFrame({"id": ids[:n_labeled], "breed": labels[:n_labeled]}), out / "labels.csv")
    class_columns = sorted(classes)
    sample = pd.DataFrame(1 / len(class_columns), index=range(n_test), columns=class_columns)
    sample.insert(0, "id", ids[n_labeled:])
    write_csv(sample, out / "sample_submission.csv")
    write_csv(pd.DataFrame({"id": ids[n_labeled:], "label": labels[n_labeled:]}), out / "solution.csv")


def build_folder_layout(out: Path, n_labeled: int, n_test: int, classes: list[str], seed: int,
                        large_fraction: float, sizes: ImageSizes = ImageSizes(), valid_fraction: float = 0.2) -> None:
    """Dogs vs Cats layout: train/<class>/<class>.<n>.jpg, valid/<class>/..., test/<n>.jpg, sample_submission.csv."""
    rng = np.random.default_rng(seed)
    images, labels = _pick(n_labeled, n_test, classes, rng)
    n_valid = int(round(valid_fraction * n_labeled))
    test_ids = [str(i + 1) for i in range(n_test)]
    paths = [out / ("valid" if index < n_valid else "train") / label / f"{label}.{index}.jpg"
             for index, label in enumerate(labels[:n_labeled])]
    paths += [out / "test" / f"{image_id}.jpg" for image_id in test_ids]
    _write_images(images, paths, rng, large_fraction, sizes)
    write_csv(pd.DataFrame({"id": test_ids, "label": 0.5}), out / "sample_submission.csv")
    write_csv(pd.DataFrame({"id": test_ids, "label": labels[n_labeled:]}), out / "solution.csv")


def build(out: str | Path, layout: str = "csv", n_labeled: int = 1000, n_test: int = 300,
          classes: list[str] | None = None, seed: int = 0, large_fraction: float = 0.03,
          sizes: ImageSizes = ImageSizes()) -> None:
    """Build the data set into `out`, which must be absent, empty or an earlier demo build (rebuilt from scratch);
    anything else raises `demo_folder.NotTheDemoFolder` before a single file is written."""
    classes = classes or default_classes(layout)
    out = demo_folder.claim(out)
    builder = build_csv_layout if layout == "csv" else build_folder_layout
    builder(out, n_labeled, n_test, classes, seed, large_fraction, sizes)
    write_json({"layout": layout, "n_labeled": n_labeled, "n_test": n_test, "classes": classes, "seed": seed,
                "large_fraction": large_fraction}, out / demo_folder.BUILT_MARKER)
    print(f"demo data ({layout} layout): {n_labeled} labelled + {n_test} test images of {len(classes)} classes "
          f"from scikit-learn's digits -> {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="data folder to create")
    parser.add_argument("--layout", choices=["csv", "folders"], default="csv")
    parser.add_argument("--n-labeled", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--classes", nargs="+", choices=DIGIT_NAMES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--large-fraction", type=float, default=0.03, help="share of images over 1000 px")
    args = parser.parse_args(argv)
    try:
        build(out=args.out, layout=args.layout, n_labeled=args.n_labeled, n_test=args.n_test, classes=args.classes,
              seed=args.seed, large_fraction=args.large_fraction)
    except demo_folder.NotTheDemoFolder as error:
        cli.fail(str(error))


if __name__ == "__main__":
    main()
