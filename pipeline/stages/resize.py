"""Stage 2b - the resize cache every later stage reads (fastai 0.7's `resize_img`, `tmp/340/`).

The shorter side becomes `shorter_side` (each side max(floor(side*ratio), shorter_side)), bilinear, RGB, same
relative names, in parallel worker processes. A JPEG much larger than its target is decoded at a reduced scale
first (Pillow's draft mode, `images.jpeg_draft`; bench/resize.py measures it): same output size, pixels within a
grey level or two of a full decode. Unlike 0.7, which skipped existing outputs and so could serve stale
images, the cache is rebuilt whenever the data, the code or its parameters change (Snakemake's rerun triggers plus a
data fingerprint), and each image is written atomically.

    python -m pipeline.stages.resize --data-dir data/demo --bad-images out/stats/bad_images.csv \
        --out-dir out/resized/340 --params '{"layout": "csv", "shorter_side": 340}'
"""
from __future__ import annotations

import functools
from pathlib import Path

from pipeline import cli
from pipeline.data.dataset import DataError, all_images, read_bad_paths
from pipeline.compute.parallel import map_chunks
from pipeline.data.resizing import resize_one


def resize_paths(data_dir: str, out_dir: str, shorter_side: int, jpeg_quality: int, draft: bool,
                 paths: list[str]) -> list[str]:
    for path in paths:
        try:
            resize_one(Path(data_dir) / path, Path(out_dir) / path, shorter_side, jpeg_quality, draft)
        except Exception as error:
            raise DataError(f"{Path(data_dir) / path}: cannot resize: {type(error).__name__}: {error}") from error
    return paths


def resize_cache(data_dir: str, out_dir: str, layout: str, suffix: str, shorter_side: int, jpeg_quality: int,
                 n_jobs: int, skip: set[str] = frozenset(), draft: bool = True) -> int:
    """Resize every image of the data set except those in `skip` (unreadable ones, already reported)."""
    paths = [p for p in all_images(data_dir, layout, suffix)["path"] if p not in skip]
    task = functools.partial(resize_paths, data_dir, out_dir, shorter_side, jpeg_quality, draft)
    map_chunks(task, paths, n_jobs, f"resize to {shorter_side}")
    return len(paths)


# The slice (pipeline.workflow.slices): where its keys come from in the recipe, and what the workflow adds.
RECIPE_KEYS = ("data.layout", "data.suffix", "images.shorter_side", "images.jpeg_quality", "images.jpeg_draft")


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--bad-images", help="bad_images.csv from the image-stats stage: left out")
    args, params, started = cli.begin("resize", parser, argv)
    shorter_side = params["shorter_side"]
    skip = read_bad_paths(args.bad_images)
    try:
        n = resize_cache(data_dir=args.data_dir, out_dir=args.out_dir, layout=params["layout"], suffix=params["suffix"],
                         shorter_side=shorter_side, jpeg_quality=params["jpeg_quality"], n_jobs=args.threads, skip=skip,
                         draft=params["jpeg_draft"])
    except DataError as error:
        cli.fail(str(error))
    print(f"resized {n} images to shorter side {shorter_side} -> {args.out_dir}", flush=True)
    cli.finish("resize", started)


if __name__ == "__main__":
    main()
