"""Stage 5a - lr_find again before a fine-tune size's fits (the lesson's "unfreeze, lr_find again").

Restores the checkpoint that size starts from, freezes or unfreezes it as the size does, and runs fastai 0.7's
lr_find on its augmented training images. With a differential lr in the size's first fit (one value per layer
group), every group's lr sweeps together in the fit's ratios, as 0.7's `lr_find(lrs / 1000)` did; the plot's
x-axis is the last group's lr. Its own job, reading the checkpoint and writing only the plot: the size's fits never
see it, so turning it on or off never reruns them.

    python -m pipeline.stages.lr_find --split-csv out/split.csv --cache-dir out/resized/340 \
        --checkpoint out/head/model.pt --out-dir out/finetune/1_224 \
        --params '{"size": 224, "unfreeze": true, "lr": [1e-4, 1e-3, 1e-2], ...}'
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from pipeline import cli
from pipeline.report import plots
from pipeline.compute import runtime
from pipeline.data.dataset import read_split
from pipeline.train.fit import OptimizerSpec, lr_find
from pipeline.io import write_csv
from pipeline.train.loaders import image_loaders
from pipeline.models.classifier import WeightsError, restore_model


# The slice (pipeline.workflow.slices): where its keys come from in the recipe, and what the workflow adds; `lr` is the
# size's first fit's.
RECIPE_KEYS = ("seed", "device", "amp", "model.arch", "finetune.size", "finetune.unfreeze", "finetune.bn_freeze",
               "train.optimizer", "train.weight_decay", "train.train_bn", "transforms", "loader")
WORKFLOW_KEYS = ("lr", "preprocessing")


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS, WORKFLOW_KEYS)
    parser.add_argument("--split-csv", required=True)
    parser.add_argument("--cache-dir", required=True, help="the resize cache")
    parser.add_argument("--checkpoint", required=True, help="model.pt the fine-tune size starts from")
    parser.add_argument("--out-dir", required=True)
    args, params, started = cli.begin("lr_find", parser, argv)
    device, precision = runtime.start(params, args.threads)
    train, valid, classes = read_split(args.split_csv)
    with cli.stopping_on(WeightsError):
        model, _ = restore_model(args.checkpoint, params["arch"], classes)
    model = runtime.on_device(model, device)
    model.train_as_size(params)
    train_loader, _ = image_loaders(train=train, valid=valid, cache_dir=args.cache_dir, params=params, device=device)
    searching = time.perf_counter()
    found = lr_find(model=model, train_batches=train_loader, device=device, amp=precision.train, lr=params["lr"],
                    optimizer_spec=OptimizerSpec.from_params(params))
    seconds = time.perf_counter() - searching
    out_dir = Path(args.out_dir)
    write_csv(pd.DataFrame({key: found[key] for key in ("lr", "loss", "smoothed_loss")}), out_dir / "lr_find.csv")
    plots.lr_finder(found, out_dir / "lr_find.png")
    ratios = ", ".join(f"{ratio:.3g}" for ratio in found["group_ratios"])
    steps = len(found["lr"])
    # Per step, loading included, to set beside the fine-tune's epochs (its log's time / batches): the same work.
    print(f"lr_find at {params['size']}px: {steps} steps in {seconds:.1f}s ({seconds / steps:.2f}s a step, at most "
          f"one epoch's {len(train_loader)}), suggested lr {found['suggested_lr']:.3g} for the last layer group "
          f"(groups move together, in the ratios {ratios})", flush=True)
    cli.finish("lr_find", started)


if __name__ == "__main__":
    main()
