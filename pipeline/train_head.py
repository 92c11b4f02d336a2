"""Stage 4 - train the classifier head: lr_find and fits on the precomputed activations, then fits with
augmentation through the frozen body (fastai 0.7: `precompute=True` fits, then `precompute=False`).

    python -m pipeline.train_head --split-csv out/split.csv --activations out/activations/224 \
        --cache-dir out/resized/340 --out-dir out/head --params '{...}'

Writes model.pt (weights + metadata), log.csv (one row per epoch), lr_find.csv/.png, lr_schedule.png, curves.png,
batch_loss.png (every batch's loss).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import cli, distributed, plots, runtime
from pipeline.data import read_split
from pipeline.fit import EpochLog, OptimizerSpec, ResumePoint, TensorBatches, lr_find, run_fits
from pipeline.io import file_digest, params_digest, read_json, remove_stale_temporaries, write_csv
from pipeline.loaders import image_loaders
from pipeline.model import WeightsError, build_seeded_classifier, checkpoint_meta, save_checkpoint

# Where the slice's keys come from in the recipe (pipeline.recipe_defaults).
RECIPE_KEYS = (*runtime.RECIPE_KEYS, "model", "head", "transforms", "loader", "train")


def check_activations(manifest: dict, params: dict, classes: list[str], split_csv: str) -> None:
    """Refuse activations computed for another split, backbone, weights or size: never a silently stale cache."""
    expected = {"arch": params["arch"], "weights": params["weights"],
                "weights_digest": params.get("weights_digest"), "size": params["size"],
                "classes": classes, "split_digest": file_digest(split_csv)}
    wrong = {key: (manifest.get(key), value) for key, value in expected.items() if manifest.get(key) != value}
    if wrong:
        cli.fail(f"activations do not match this run (have, want): {wrong}; rerun the precompute stage")


def load_activations(folder: Path, name: str, frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    # The head trains on the whole split in RAM (N x features floats); np.load gives a read-only array.
    return torch.from_numpy(np.load(folder / f"{name}.npy").copy()), torch.as_tensor(frame["y"].to_numpy())


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS)
    parser.add_argument("--split-csv", required=True)
    parser.add_argument("--activations", required=True, help="folder written by the precompute stage")
    parser.add_argument("--cache-dir", required=True, help="the resize cache")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    params = args.params
    started = cli.announce("train_head", params)
    device, amp = runtime.start(params, args.threads)
    out_dir, activations = Path(args.out_dir), Path(args.activations)
    main_rank = distributed.is_main()  # under torchrun (`devices: N`), rank 0 alone writes
    if main_rank:
        remove_stale_temporaries(out_dir)
    train, valid, classes = read_split(args.split_csv)
    manifest = read_json(activations / "manifest.json")
    check_activations(manifest, params, classes, args.split_csv)
    try:
        model = build_seeded_classifier(params, len(classes))
    except WeightsError as error:
        cli.fail(str(error))
    if runtime.state_digest(model.body) != manifest["body_digest"]:
        cli.fail("the rebuilt backbone differs from the one that computed the activations; rerun precompute")
    model = runtime.on_device(model, device)
    seed, warmup = params["seed"], params["warmup"]
    optimizer = OptimizerSpec.from_params(params)
    log = EpochLog(out_dir / "log.csv")
    # Digests of the slice as passed: a workflow run's resume key and checkpoint hash are those of its rule's slice.
    resume_key = params_digest(params.as_passed, activations / "manifest.json")
    resume = ResumePoint(out_dir / "resume.pt", resume_key, model, log)
    batch_size = params["batch_size"]
    train_acts = TensorBatches(*load_activations(activations, "train", train), batch_size, True, torch.Generator())
    valid_acts = TensorBatches(*load_activations(activations, "valid", valid), batch_size)

    if params["lr_find"]:
        runtime.seed_everything(seed)
        train_acts.generator.manual_seed(seed)
        found = lr_find(model.head, train_acts, device, amp=amp, optimizer_spec=optimizer)
        if main_rank:
            write_csv(pd.DataFrame({k: found[k] for k in ("lr", "loss", "smoothed_loss")}), out_dir / "lr_find.csv")
            plots.lr_finder(found, out_dir / "lr_find.png")
        print(f"lr_find: {len(found['lr'])} steps, suggested lr {found['suggested_lr']:.3g}", flush=True)
    # On the activations every rank (if several) fits the same head alike: seconds of work, not worth splitting.
    schedules = run_fits(model.head, train_acts, valid_acts, params["precomputed"], "precomputed", device, log,
                         warmup, amp, seed, resume, optimizer_spec=optimizer)
    if params["augmented"]:
        model.freeze()
        model.train_bn(params["train_bn"])
        train_loader, valid_loader = image_loaders(train, valid, args.cache_dir, params, device)
        run_fits(distributed.wrap(model, device), train_loader, valid_loader, params["augmented"], "augmented",
                 device, log, warmup, amp, seed, resume, schedules, optimizer_spec=optimizer)
    if main_rank:
        plots.lr_schedules(schedules, out_dir / "lr_schedule.png")
        plots.training_curves(pd.DataFrame(log.rows), out_dir / "curves.png")
        plots.batch_losses(log.batch_losses, out_dir / "batch_loss.png")
        meta = checkpoint_meta(params, classes, "head", model, amp, params_digest(params.as_passed))
        save_checkpoint(model, out_dir / "model.pt", meta)
    resume.finish()
    distributed.finish()
    cli.finish("train_head", started)


if __name__ == "__main__":
    main()
