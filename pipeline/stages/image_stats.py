"""Stage 2a - image statistics: `sizes.csv` (id, split, width, height, mode, bytes) in one parallel pass over the
images, the lesson's width/height histograms (all, and under 1000 px), and a JSON summary.
Every image is decoded once here, so this is the first stage to meet a bad file: by default an unreadable image
(empty, not an image, truncated, over the decompression-bomb limit) stops the stage with the full list of bad
files; with `on_bad_image: skip` they are listed in `bad_images.csv`, which the later stages leave out.

    python -m pipeline.stages.image_stats --data-dir data/demo --sizes-csv out/stats/sizes.csv \
        --summary out/stats/summary.json --plot-all out/plots/sizes_all.png \
        --plot-small out/plots/sizes_under_1000.png --bad-images out/stats/bad_images.csv \
        --params '{"layout": "csv", "on_bad_image": "error"}'
"""
from __future__ import annotations

import functools
import os

import pandas as pd
from PIL import Image

from pipeline import cli
from pipeline.report import plots
from pipeline.data.dataset import DataError, all_images, inspect_image
from pipeline.io import write_csv, write_json
from pipeline.compute.parallel import map_chunks

COLUMNS = ["id", "split", "width", "height", "mode", "bytes"]
BAD_COLUMNS = ["id", "split", "path", "error"]


def read_images(data_dir: str, max_pixels: int | None, rows: list[tuple[str, str, str]]) -> list[tuple]:
    """(id, split, width, height, mode, bytes, error) per image, decoding each file once."""
    records = []
    for image_id, split, path in rows:
        full = os.path.join(data_dir, path)
        try:
            width, height, mode = inspect_image(full, max_pixels)
            records.append((image_id, split, width, height, mode, os.path.getsize(full), ""))
        except Exception as error:  # every failure is reported with its file below, never swallowed
            records.append((image_id, split, 0, 0, "", 0, f"{type(error).__name__}: {error}"))
    return records


def image_stats(data_dir: str, layout: str, suffix: str, n_jobs: int,
                max_pixels: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sizes of the readable images, bad images with their errors)."""
    images = all_images(data_dir, layout, suffix)
    rows = list(images[["id", "split", "path"]].itertuples(index=False, name=None))
    records = map_chunks(functools.partial(read_images, data_dir, max_pixels or Image.MAX_IMAGE_PIXELS), rows,
                         n_jobs, "image sizes")
    table = pd.DataFrame(records, columns=COLUMNS + ["error"]).assign(path=images["path"].to_numpy())
    bad = table["error"] != ""
    return table.loc[~bad, COLUMNS].reset_index(drop=True), table.loc[bad, BAD_COLUMNS].reset_index(drop=True)


def check_bad_images(bad: pd.DataFrame, on_bad_image: str) -> None:
    """Policy: 'error' stops with every bad file listed; 'skip' lists them in bad_images.csv and goes on."""
    if bad.empty:
        return
    listing = "\n  ".join(f"{row.path}: {row.error}" for row in bad.itertuples())
    if on_bad_image == "error":
        raise DataError(f"{len(bad)} images cannot be read (set images.on_bad_image: skip to leave them out):"
                        f"\n  {listing}")
    print(f"skipping {len(bad)} unreadable images (listed in bad_images.csv):\n  {listing}", flush=True)


def summarise(sizes: pd.DataFrame) -> dict:
    def describe(column: str) -> dict:
        values = sizes[column]
        return {"min": int(values.min()), "median": float(values.median()), "mean": round(float(values.mean()), 1),
                "max": int(values.max())}

    return {"n_images": int(len(sizes)), "by_split": sizes["split"].value_counts().to_dict(),
            "width": describe("width"), "height": describe("height"),
            "n_over_1000px": int(((sizes["width"] >= 1000) | (sizes["height"] >= 1000)).sum()),
            "modes": sizes["mode"].value_counts().to_dict(), "total_megabytes": round(sizes["bytes"].sum() / 1e6, 2)}


# The slice (pipeline.workflow.slices): where its keys come from in the recipe, and what the workflow adds.
RECIPE_KEYS = ("data.layout", "data.suffix", "images.on_bad_image", "images.max_pixels")


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--sizes-csv", required=True)
    parser.add_argument("--summary", required=True)
    parser.add_argument("--plot-all", required=True)
    parser.add_argument("--plot-small", required=True)
    parser.add_argument("--bad-images", required=True, help="CSV of unreadable images (id, split, path, error)")
    args, params, started = cli.begin("image_stats", parser, argv)
    try:
        sizes, bad = image_stats(args.data_dir, params["layout"], params["suffix"], args.threads,
                                 params["max_pixels"])
        check_bad_images(bad, params["on_bad_image"])
    except DataError as error:
        cli.fail(str(error))
    write_csv(bad, args.bad_images)
    write_csv(sizes, args.sizes_csv)
    summary = summarise(sizes)
    write_json(summary, args.summary)
    plots.size_histograms(sizes, args.plot_all)
    plots.size_histograms(sizes, args.plot_small, max_side=1000)
    print(f"{summary['n_images']} images; median {summary['width']['median']:.0f}x{summary['height']['median']:.0f}"
          f" px, {summary['n_over_1000px']} over 1000 px; modes {summary['modes']}", flush=True)
    cli.finish("image_stats", started)


if __name__ == "__main__":
    main()
