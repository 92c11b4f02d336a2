"""Stage 4 - train the classifier head: lr_find and fits on the precomputed activations, then fits with
augmentation through the frozen body (fastai 0.7: `precompute=True` fits, then `precompute=False`).

    python -m pipeline.stages.train_head --split-csv out/split.csv --activations out/activations/224 \
        --cache-dir out/resized/340 --out-dir out/head --params '{...}'

Writes model.pt (weights + metadata), log.csv (one row per epoch), lr_find.csv/.png, lr_schedule.png, curves.png,
batch_loss.png (every batch's loss).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import cli
from pipeline.compute import distributed
from pipeline.report import plots
from pipeline.compute import runtime
from pipeline.data.dataset import read_split, training_targets
from pipeline.train.fit import TensorBatches, lr_find
from pipeline.io import file_digest, read_json, write_csv
from pipeline.train.loaders import image_loaders
from pipeline.models.classifier import WeightsError, build_seeded_classifier
from pipeline.train.run import TrainingRun

# The slice (pipeline.workflow.slices): where its keys come from in the recipe, and what the workflow adds.
RECIPE_KEYS = ("seed", "device", "amp", "model", "head", "transforms", "loader", "train")
WORKFLOW_KEYS = ("weights_digest", "preprocessing", "images", "devices")


def check_activations(manifest: dict, params: dict, classes: list[str], split_csv: str) -> None:
    """Refuse activations computed for another split, backbone, weights or size: never a silently stale cache."""
    expected = {"arch": params["arch"], "weights": params["weights"],
                "weights_digest": params.get("weights_digest"), "size": params["size"],
                "classes": classes, "split_digest": file_digest(split_csv)}
    wrong = {key: (manifest.get(key), value) for key, value in expected.items() if manifest.get(key) != value}
    if wrong:
        cli.fail(f"activations do not match this run (have, want): {wrong}; rerun the precompute stage")


def load_activations(folder: Path, name: str, targets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    # The head trains on the whole split in RAM (N x features floats); np.load gives a read-only array, and the
    # targets may be a read-only view of the split's table: both copied (torch warns on a tensor over read-only memory).
    return torch.from_numpy(np.load(folder / f"{name}.npy").copy()), torch.tensor(targets)


def rebuilt_classifier(params, n_classes: int, manifest: dict):
    """The classifier whose backbone computed the activations: the same seeded build, checked by its digest."""
    with cli.stopping_on(WeightsError):
        model = build_seeded_classifier(params, n_classes)
    if runtime.state_digest(model.body) != manifest["body_digest"]:
        cli.fail("the rebuilt backbone differs from the one that computed the activations; rerun precompute")
    return model


def head_lr_find(run: TrainingRun, model, train_acts: TensorBatches) -> None:
    """The lesson's first lr_find, on the activations: lr_find.csv and lr_find.png."""
    seed = run.params["seed"]
    runtime.seed_everything(seed)
    train_acts.generator.manual_seed(seed)
    found = lr_find(model=model.head, train_batches=train_acts, device=run.device, amp=run.precision.train,
                    optimizer_spec=run.optimizer)
    if run.main_rank:
        write_csv(pd.DataFrame({k: found[k] for k in ("lr", "loss", "smoothed_loss")}), run.out_dir / "lr_find.csv")
        plots.lr_finder(found, run.out_dir / "lr_find.png")
    print(f"lr_find: {len(found['lr'])} steps, suggested lr {found['suggested_lr']:.3g}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS, WORKFLOW_KEYS)
    parser.add_argument("--split-csv", required=True)
    parser.add_argument("--activations", required=True, help="folder written by the precompute stage")
    parser.add_argument("--cache-dir", required=True, help="the resize cache")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    params = args.params
    run = TrainingRun("train_head", params, args.threads, args.out_dir)
    activations = Path(args.activations)
    train, valid, classes = read_split(args.split_csv)
    manifest = read_json(activations / "manifest.json")
    check_activations(manifest, params, classes, args.split_csv)
    model = runtime.on_device(rebuilt_classifier(params, len(classes), manifest), run.device)
    run.resume_point(model, activations / "manifest.json")
    batch_size = params["batch_size"]
    # Train rows learn their training targets (soft pseudo-labels where the split has them); valid rows score `y`.
    train_acts = TensorBatches(*load_activations(activations, "train", training_targets(train)), batch_size, True,
                               torch.Generator())
    valid_acts = TensorBatches(*load_activations(activations, "valid", valid["y"].to_numpy()), batch_size)

    if params["lr_find"]:
        head_lr_find(run, model, train_acts)
    # On the activations every rank (if several) fits the same head alike: seconds of work, not worth splitting.
    schedules = run.fit(model=model.head, train_batches=train_acts, valid_batches=valid_acts,
                        fits=params["precomputed"], phase="precomputed")
    if params["augmented"]:
        model.freeze()
        model.train_bn(params["train_bn"])
        regularisation = run.regularise(model)
        train_loader, valid_loader = image_loaders(train=train, valid=valid, cache_dir=args.cache_dir, params=params,
                                                   device=run.device, regularisation=regularisation)
        run.fit(model=distributed.wrap(model, run.device), train_batches=train_loader, valid_batches=valid_loader,
                fits=params["augmented"], phase="augmented", schedules=schedules, regularisation=regularisation)
    run.save(model, schedules, run.checkpoint_meta(model, classes, "head"))
    run.finish()


if __name__ == "__main__":
    main()
