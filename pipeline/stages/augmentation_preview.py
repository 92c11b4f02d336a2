"""The lesson's `plots(ims)`: one training image from the resize cache under six random training augmentations.

    python -m pipeline.stages.augmentation_preview --cache-dir out/resized/340 --out out/plots/augmentations.png \
        --params '{"size": 224}'
"""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline import cli
from pipeline.report import plots
from pipeline.data.dataset import load_rgb
from pipeline.data.transforms import train_transform


def augmentation_preview(cache_dir: str, out: str, size: int, max_zoom: float, augmentation: str, seed: int,
                         preprocessing: dict | None = None) -> None:
    first = min(p for p in Path(cache_dir, "train").rglob("*") if p.is_file())
    image = load_rgb(first)
    transform = train_transform(size=size, max_zoom=max_zoom, augmentation=augmentation, normalise=False,
                                preprocessing=preprocessing)
    torch.manual_seed(seed)
    views = [transform(image).permute(1, 2, 0).numpy() for _ in range(6)]
    plots.image_grid(views, out, f"{first.name}: {augmentation} at {size}px, max_zoom {max_zoom}")


# The slice (pipeline.workflow.slices): where its keys come from in the recipe, and what the workflow adds.
RECIPE_KEYS = ("seed", "head.size", "transforms")
WORKFLOW_KEYS = ("preprocessing",)


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS, WORKFLOW_KEYS)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--out", required=True)
    args, params, started = cli.begin("augmentation_preview", parser, argv)
    augmentation_preview(cache_dir=args.cache_dir, out=args.out, size=params["size"], max_zoom=params["max_zoom"],
                         augmentation=params["augmentation"], seed=params["seed"],
                         preprocessing=params.get("preprocessing"))
    cli.finish("augmentation_preview", started)


if __name__ == "__main__":
    main()
