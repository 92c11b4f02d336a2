"""Stage 6 - test-time augmentation: one plain pass plus `n_aug` passes with the training augmentations drawn at
random (`tta.mode: random`, fastai 0.7's), or with fixed views (`deterministic`: the offline bundle repeats them), on
the validation set (for metrics) and the test set (for the submission). As fastai 0.7's `learn.TTA()`, the
prediction is the mean of the passes' probabilities (`valid_probs.npy`, `test_probs.npy`). The plain pass and the
augmented passes' mean are also kept apart (`*_passes.npy`, see `pipeline.predict.passes`) for the calibrate stage.
With several checkpoints (a snapshot ensemble: the ends of the last SGDR cycles), each pass is averaged over them.

    python -m pipeline.stages.tta --split-csv out/split.csv --test-csv out/test.csv --cache-dir out/resized/340 \
        --checkpoint out/finetune/2_299/model.pt --out-dir out/tta --metrics out/metrics.json --params '{...}'
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import cli
from pipeline.predict import passes
from pipeline.report import plots
from pipeline.compute import runtime
from pipeline.data.dataset import class_prior, read_split, read_test_table
from pipeline.predict.inference import tta_log_probs
from pipeline.io import remove_stale_temporaries, save_npy, write_json
from pipeline.models.classifier import WeightsError, restore_model


def with_prior_for_unusable(probs: np.ndarray, usable: np.ndarray, prior: np.ndarray, unusable_paths) -> np.ndarray:
    """Every test id gets a row: an unreadable test image (skipped upstream) gets the training class prior."""
    full = np.tile(prior, (len(usable), 1))
    full[usable] = probs
    if unusable_paths:
        print(f"{len(unusable_paths)} unreadable test images get the training class prior: "
              f"{', '.join(unusable_paths)}", flush=True)
    return full


def valid_metrics(valid_passes: np.ndarray, y: np.ndarray, n_aug: int, n_classes: int) -> dict:
    from sklearn.metrics import accuracy_score, log_loss  # kept out of the stage's start-up: 0.7-1.7 s

    labels = list(range(n_classes))
    plain, averaged = passes.plain(valid_passes), passes.tta_mean(valid_passes, n_aug)
    return {"valid_accuracy": float(accuracy_score(y, averaged.argmax(1))),
            "valid_logloss": float(log_loss(y, averaged, labels=labels)),
            "valid_accuracy_no_tta": float(accuracy_score(y, plain.argmax(1))),
            "valid_logloss_no_tta": float(log_loss(y, plain, labels=labels)),
            "n_aug": n_aug, "n_valid": int(len(y))}


# The slice (pipeline.workflow.slices): where its keys come from in the recipe, and what the workflow adds.
RECIPE_KEYS = ("seed", "device", "amp", "model.arch", "tta", "transforms", "loader")
WORKFLOW_KEYS = ("preprocessing",)


def passes_amp(params, device) -> bool:
    """bf16 autocast for the passes: the inference precision chosen for the arch at the checkpoint's size (logged with
    its reason by runtime.chosen_precision), except in deterministic mode. Deterministic TTA computes what the offline
    bundle's float32 ONNX models compute, so it runs in float32: under bf16 autocast the demo's bundle landed up to
    0.14 away from its submission (3 of 397 top classes), and the calibration would be fitted on passes no bundle
    computes."""
    if params["mode"] == "deterministic":
        print(f"precision: inference fp32 (amp {params['amp']}, but deterministic TTA computes what the offline "
              "bundle's float32 ONNX models compute)", flush=True)
        return False
    return runtime.chosen_precision(params, device).infer


def ensemble_passes(checkpoints: list[str], params, classes: list[str], valid: pd.DataFrame, test: pd.DataFrame,
                    cache_dir: str, device) -> tuple[np.ndarray, np.ndarray, list[dict], dict, bool]:
    """Each checkpoint's TTA passes on valid and test, averaged over the checkpoints (a snapshot ensemble when several);
    also each checkpoint's own validation scores, the last one's meta (its size, its training's precision) and
    whether the passes ran under bf16 autocast."""
    valid_by_model, test_by_model, per_checkpoint, amp = [], [], [], None
    for checkpoint in checkpoints:
        with cli.stopping_on(WeightsError):
            model, meta = restore_model(checkpoint, params["arch"], classes)
        model = runtime.on_device(model, device)
        sized = params.updated(size=meta["size"], preprocessing=meta.get("images", {}).get(
            "preprocessing", params.get("preprocessing")))
        if amp is None:  # a snapshot ensemble's checkpoints share their arch and size: one choice, logged once
            amp = passes_amp(sized, device)
        for images, name, found in ((valid, "valid", valid_by_model), (test, "test", test_by_model)):
            found.append(passes.from_log_probs(tta_log_probs(model=model, frame=images, cache_dir=cache_dir,
                                                             params=sized, device=device, amp=amp, name=name)))
        per_checkpoint.append({"checkpoint": Path(checkpoint).name,
                               **valid_metrics(valid_by_model[-1], valid["y"].to_numpy(), params["n_aug"],
                                               len(classes))})
    return passes.average(valid_by_model), passes.average(test_by_model), per_checkpoint, meta, amp


def report(metrics: dict, valid_passes: np.ndarray, y: np.ndarray, classes: list[str], n_aug: int,
           confusion_png: Path) -> None:
    """The confusion matrix under TTA, and the scores (each snapshot's too) in the log."""
    from sklearn.metrics import confusion_matrix  # as in valid_metrics: only once the passes are done

    if "snapshots" in metrics:
        print("snapshot ensemble: " + "; ".join(f"{row['checkpoint']} log loss {row['valid_logloss']:.4f}"
                                                for row in metrics["snapshots"])
              + f" -> {metrics['valid_logloss']:.4f} averaged", flush=True)
    matrix = confusion_matrix(y, passes.tta_mean(valid_passes, n_aug).argmax(1), labels=range(len(classes)))
    plots.confusion_matrix(matrix, classes, confusion_png,
                           f"valid, TTA ({n_aug} aug): accuracy {metrics['valid_accuracy']:.3f}")
    print(f"valid accuracy {metrics['valid_accuracy_no_tta']:.4f} -> {metrics['valid_accuracy']:.4f} with TTA; "
          f"log loss {metrics['valid_logloss_no_tta']:.4f} -> {metrics['valid_logloss']:.4f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS, WORKFLOW_KEYS)
    parser.add_argument("--split-csv", required=True)
    parser.add_argument("--test-csv", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--checkpoint", required=True, nargs="+",
                        help="model.pt of the last stage; several = a snapshot ensemble, the final weights last")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--metrics", required=True)
    args, params, started = cli.begin("tta", parser, argv)
    # The precision is chosen once the checkpoint says its size (ensemble_passes).
    device = runtime.setup(args.threads, params["seed"], params["device"])
    train, valid, classes = read_split(args.split_csv)
    test = read_test_table(args.test_csv)
    usable = test["usable"].to_numpy()
    n_aug, y = params["n_aug"], valid["y"].to_numpy()
    out_dir = Path(args.out_dir)
    remove_stale_temporaries(out_dir)

    valid_passes, test_usable, per_checkpoint, meta, amp = ensemble_passes(
        checkpoints=args.checkpoint, params=params, classes=classes, valid=valid, test=test[usable],
        cache_dir=args.cache_dir, device=device)
    # Metrics from the float32 passes the stage saves, so that calibrate, reading them, scores the very same numbers.
    valid_passes = valid_passes.astype(np.float32)
    prior, unusable = class_prior(train, len(classes)), test.loc[~usable, "path"].tolist()
    test_passes = np.stack([with_prior_for_unusable(test_usable[index], usable, prior, unusable if index == 0 else [])
                            for index in range(2)])
    # amp: whether the passes ran under bf16 autocast, which bounds how close the bundle's fp32 models come to them;
    # amp_training: whether the model's training steps did (None for a checkpoint that predates the record)
    metrics = {**valid_metrics(valid_passes, y, n_aug, len(classes)), "size": meta["size"], "classes": classes,
               "amp": amp, "amp_training": meta.get("amp_training"),
               **({"snapshots": per_checkpoint} if len(per_checkpoint) > 1 else {})}

    save_npy(valid_passes, out_dir / "valid_passes.npy")
    save_npy(test_passes.astype(np.float32), out_dir / "test_passes.npy")
    save_npy(passes.tta_mean(valid_passes, n_aug), out_dir / "valid_probs.npy")
    save_npy(passes.tta_mean(test_passes, n_aug), out_dir / "test_probs.npy")
    write_json(metrics, args.metrics)
    report(metrics=metrics, valid_passes=valid_passes, y=y, classes=classes, n_aug=n_aug,
           confusion_png=out_dir / "confusion_matrix.png")
    cli.finish("tta", started)


if __name__ == "__main__":
    main()
