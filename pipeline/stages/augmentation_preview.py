"""The lesson's `plots(ims)`: one training image from the resize cache under six random training augmentations.

    python -m pipeline.stages.augmentation_preview --cache-dir out/resized/340 --out out/plots/augmentations.png \
        --params '{"size": 224}'
"""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline import cli, plots
from pipeline.data import load_rgb
from pipeline.transforms import train_transform


def augmentation_preview(cache_dir: str, out: str, size: int, max_zoom: float, augmentation: str, seed: int,
                         preprocessing: dict | None = None) -> None:
    first = min(p for p in Path(cache_dir, "train").rglob("*") if p.is_file())
    image = load_rgb(first)
    transform = train_transform(size, max_zoom, augmentation, normalise=False, preprocessing=preprocessing)
    torch.manual_seed(seed)
    views = [transform(image).permute(1, 2, 0).numpy() for _ in range(6)]
    plots.image_grid(views, out, f"{first.name}: {augmentation} at {size}px, max_zoom {max_zoom}")


# Where the slice's keys come from in the recipe (pipeline.recipe_defaults).
RECIPE_KEYS = ("seed", "head.size", "transforms")


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    params = args.params
    started = cli.announce("augmentation_preview", params)
    augmentation_preview(args.cache_dir, args.out, params["size"], params["max_zoom"], params["augmentation"],
                         params["seed"], params.get("preprocessing"))
    cli.finish("augmentation_preview", started)


if __name__ == "__main__":
    main()
