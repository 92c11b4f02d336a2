"""Stage 5 - fine-tune at one size of the progressive-resizing schedule (224 -> 299 in the lesson).

Starts from the previous checkpoint (the head's, or the previous size's), optionally unfreezes with per-layer-group
learning rates (fastai's 3 groups), runs the size's SGDR fits on augmented images, and saves a checkpoint.
As 0.7's `set_data`, a new size starts frozen unless the recipe unfreezes it.

    python -m pipeline.finetune --split-csv out/split.csv --cache-dir out/resized/340 --checkpoint out/head/model.pt \
        --out-dir out/finetune/1_299 --params '{"size": 299, "unfreeze": false, "fits": [...], ...}'
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline import cli, plots, runtime
from pipeline.data import read_split
from pipeline.fit import EpochLog, ResumePoint, run_fits
from pipeline.io import params_digest, remove_stale_temporaries
from pipeline.loaders import image_loaders
from pipeline.model import WeightsError, checkpoint_meta, restore_model, save_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__)
    parser.add_argument("--split-csv", required=True)
    parser.add_argument("--cache-dir", required=True, help="the resize cache")
    parser.add_argument("--checkpoint", required=True, help="model.pt of the previous stage")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    params = args.params
    started = cli.announce("finetune", params)
    device, amp = runtime.start(params, args.threads)
    train, valid, classes = read_split(args.split_csv)
    try:
        model, previous = restore_model(args.checkpoint, params["arch"], classes)
    except WeightsError as error:
        cli.fail(str(error))
    unfreeze = params.get("unfreeze", False)
    print(f"from {args.checkpoint} (trained at {previous['size']}px) -> {params['size']}px, "
          f"{'all layer groups train' if unfreeze else 'body frozen, head trains'}", flush=True)
    model = model.to(device)
    model.unfreeze() if unfreeze else model.freeze()
    out_dir = Path(args.out_dir)
    remove_stale_temporaries(out_dir)
    log = EpochLog(out_dir / "log.csv")
    resume = ResumePoint(out_dir / "resume.pt", params_digest(params, args.checkpoint), model, log)
    train_loader, valid_loader = image_loaders(train, valid, args.cache_dir, params, device)
    schedules = run_fits(model, train_loader, valid_loader, params["fits"], f"size {params['size']}", device, log,
                         params.get("warmup", True), amp, params.get("seed", 42), resume)
    plots.lr_schedules(schedules, out_dir / "lr_schedule.png")
    plots.training_curves(pd.DataFrame(log.rows), out_dir / "curves.png")
    save_checkpoint(model, out_dir / "model.pt", checkpoint_meta(params, classes, "finetune", model))
    resume.finish()
    cli.finish("finetune", started)


if __name__ == "__main__":
    main()
