"""Stage 5 - fine-tune at one size of the progressive-resizing schedule (224 -> 299 in the lesson).

Starts from the previous checkpoint (the head's, or the previous size's), optionally unfreezes with per-layer-group
learning rates (fastai's 3 groups), runs the size's SGDR fits on augmented images, and saves a checkpoint.
As 0.7's `set_data`, a new size starts frozen unless the recipe unfreezes it.
With `--snapshots`, also keeps the weights at the end of earlier SGDR cycles of the last fit (a snapshot ensemble,
0.7's `cycle_save_name`): with k-1 paths, the k-1 cycles before the final one, whose weights are model.pt.

    python -m pipeline.stages.finetune --split-csv out/split.csv --cache-dir out/resized/340 \
        --checkpoint out/head/model.pt --out-dir out/finetune/1_299 \
        --params '{"size": 299, "unfreeze": false, "fits": [...], ...}' \
        --snapshots out/finetune/1_299/snapshots/cycle_1.pt out/finetune/1_299/snapshots/cycle_2.pt
"""
from __future__ import annotations

import shutil
from pathlib import Path

from pipeline import cli
from pipeline.compute import distributed
from pipeline.compute import runtime
from pipeline.data.dataset import read_split
from pipeline.train.fit import FitSpec
from pipeline.io import atomic_path
from pipeline.train.loaders import image_loaders
from pipeline.models.classifier import WeightsError, restore_model, save_checkpoint
from pipeline.train.run import TrainingRun

# The slice (pipeline.workflow.slices): where its keys come from in the recipe, and what the workflow adds: one
# `finetune` item less its lr_find (the lr_find rule's job). No ps / xtra_fc: the head is the restored one, and its
# checkpoint records what it was built with.
RECIPE_KEYS = ("seed", "device", "amp", "model.arch", "finetune.size", "finetune.unfreeze", "finetune.bn_freeze",
               "finetune.snapshots", "finetune.fits", "finetune.regularise", "transforms", "loader", "train")
WORKFLOW_KEYS = ("images", "preprocessing", "devices")


def snapshot_cycles(fits: list[dict], n_snapshots: int) -> list[int]:
    """The 1-based cycles of the last fit kept as snapshots, earliest first: the n_snapshots before its final one."""
    if not n_snapshots:
        return []
    last = FitSpec.from_config(fits[-1])
    if not last.cycle_len or last.n_cycle <= n_snapshots:
        cli.fail(f"{n_snapshots} snapshots plus the final weights need a last fit with cycle_len and at least "
                 f"{n_snapshots + 1} cycles (n_cycle); the last fit is {fits[-1]}")
    return list(range(last.n_cycle - n_snapshots, last.n_cycle))


def snapshot_staging(out_dir: Path, resume_key: str) -> Path:
    """Where snapshots wait for the end of the stage, and a rerun with the same resume key finds them.

    The --snapshots paths are declared outputs, which Snakemake deletes before it reruns a failed job, while the
    rerun resumes past the cycles already trained: so each snapshot is written here first and kept like resume.pt,
    out of Snakemake's way. Another key's folder holds another run's weights, never to be mixed in: removed.
    """
    staging = out_dir / f".snapshots-{resume_key}"
    for other in out_dir.glob(".snapshots-*"):
        if other != staging:
            shutil.rmtree(other)
    return staging


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS, WORKFLOW_KEYS)
    parser.add_argument("--split-csv", required=True)
    parser.add_argument("--cache-dir", required=True, help="the resize cache")
    parser.add_argument("--checkpoint", required=True, help="model.pt of the previous stage")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--snapshots", nargs="+", action="extend", default=[], metavar="PATH",
                        help="with k-1 paths, the weights at the end of the k-1 SGDR cycles before the last fit's "
                             "final one, earliest first (the final cycle's are model.pt)")
    args = parser.parse_args(argv)
    params = args.params
    if len(args.snapshots) != params["snapshots"] - 1:
        cli.fail(f"snapshots: {params['snapshots']} keeps {params['snapshots'] - 1} weights besides model.pt, "
                 f"but --snapshots names {len(args.snapshots)} paths")
    cycles = snapshot_cycles(params["fits"], params["snapshots"] - 1)
    run = TrainingRun("finetune", params, args.threads, args.out_dir)
    train, valid, classes = read_split(args.split_csv)
    with cli.stopping_on(WeightsError):
        model, previous = restore_model(args.checkpoint, params["arch"], classes)
    print(f"from {args.checkpoint} (trained at {previous['size']}px) -> {params['size']}px, "
          f"{'all layer groups train' if params['unfreeze'] else 'body frozen, head trains'}", flush=True)
    model = runtime.on_device(model, run.device)
    model.train_as_size(params)
    regularisation = run.regularise(model)
    # The snapshot count is part of the key: a rerun asking for more must not resume past cycles it never staged.
    resume_key = run.resume_point(model, args.checkpoint, n_snapshots=len(cycles))
    staging = snapshot_staging(run.out_dir, resume_key) if run.main_rank else None
    meta = run.checkpoint_meta(model, classes, "finetune")

    def stage_snapshot(cycle: int) -> None:
        if cycle in cycles and run.main_rank:
            save_checkpoint(run.weights(model), staging / f"cycle_{cycle}.pt", {**meta, "snapshot_cycle": cycle})

    train_loader, valid_loader = image_loaders(train=train, valid=valid, cache_dir=args.cache_dir, params=params,
                                               device=run.device, regularisation=regularisation)
    schedules = run.fit(model=distributed.wrap(model, run.device), train_batches=train_loader,
                        valid_batches=valid_loader, fits=params["fits"], phase=f"size {params['size']}",
                        on_cycle_end=stage_snapshot, regularisation=regularisation)
    if run.main_rank:
        for cycle, path in zip(cycles, args.snapshots):
            # Copied, not moved: a job killed before it finishes loses these outputs; its rerun needs them staged.
            with atomic_path(path) as tmp:
                shutil.copyfile(staging / f"cycle_{cycle}.pt", tmp)
    run.save(model, schedules, meta)
    if run.main_rank:
        shutil.rmtree(staging, ignore_errors=True)
    run.finish()


if __name__ == "__main__":
    main()
