"""Stage 2a - image statistics: `sizes.csv` (id, split, width, height, mode, bytes) in one parallel pass over the
image headers, the lesson's width/height histograms (all, and under 1000 px), and a JSON summary.
Any unreadable image stops the stage with the full list of bad files.

    python -m pipeline.images --data-dir data/demo --sizes-csv out/stats/sizes.csv --summary out/stats/summary.json \
        --plot-all out/plots/sizes_all.png --plot-small out/plots/sizes_under_1000.png --params '{"layout": "csv"}'
"""
from __future__ import annotations

import functools
import os

import pandas as pd
from PIL import Image

from pipeline import cli, plots
from pipeline.data import DataError, all_images
from pipeline.io import write_csv, write_json
from pipeline.parallel import map_chunks

EXIF_ORIENTATION = 0x0112
COLUMNS = ["id", "split", "width", "height", "mode", "bytes"]


def read_headers(data_dir: str, rows: list[tuple[str, str, str]]) -> list[tuple]:
    """(id, split, width, height, mode, bytes, error) per image; sizes as displayed (EXIF rotation applied)."""
    records = []
    for image_id, split, path in rows:
        full = os.path.join(data_dir, path)
        try:
            with Image.open(full) as image:
                width, height = image.size
                if image.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8):  # stored sideways
                    width, height = height, width
                records.append((image_id, split, width, height, image.mode, os.path.getsize(full), ""))
        except Exception as error:  # every failure is reported with its file below, never swallowed
            records.append((image_id, split, 0, 0, "", 0, f"{path}: {type(error).__name__}: {error}"))
    return records


def image_stats(data_dir: str, layout: str, suffix: str, n_jobs: int) -> pd.DataFrame:
    images = all_images(data_dir, layout, suffix)
    rows = list(images[["id", "split", "path"]].itertuples(index=False, name=None))
    records = map_chunks(functools.partial(read_headers, data_dir), rows, n_jobs, "image sizes")
    sizes = pd.DataFrame(records, columns=COLUMNS + ["error"])
    bad = sizes.loc[sizes["error"] != "", "error"].tolist()
    if bad:
        raise DataError(f"{len(bad)} images cannot be read:\n  " + "\n  ".join(bad))
    return sizes[COLUMNS]


def summarise(sizes: pd.DataFrame) -> dict:
    def describe(column: str) -> dict:
        values = sizes[column]
        return {"min": int(values.min()), "median": float(values.median()), "mean": round(float(values.mean()), 1),
                "max": int(values.max())}

    return {"n_images": int(len(sizes)), "by_split": sizes["split"].value_counts().to_dict(),
            "width": describe("width"), "height": describe("height"),
            "n_over_1000px": int(((sizes["width"] >= 1000) | (sizes["height"] >= 1000)).sum()),
            "modes": sizes["mode"].value_counts().to_dict(), "total_megabytes": round(sizes["bytes"].sum() / 1e6, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--sizes-csv", required=True)
    parser.add_argument("--summary", required=True)
    parser.add_argument("--plot-all", required=True)
    parser.add_argument("--plot-small", required=True)
    args = parser.parse_args(argv)
    started = cli.announce("image_stats", args.params)
    try:
        sizes = image_stats(args.data_dir, args.params.get("layout", "csv"), args.params.get("suffix", ".jpg"),
                            args.threads)
    except DataError as error:
        cli.fail(str(error))
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
