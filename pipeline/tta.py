"""Stage 6 - test-time augmentation: one plain pass plus `n_aug` passes with the training augmentations,
on the validation set (for metrics) and the test set (for the submission). As fastai 0.7's `learn.TTA()`,
passes are stacked log-probabilities (n_aug+1, N, C) and the prediction is the mean of their probabilities.

    python -m pipeline.tta --split-csv out/split.csv --test-csv out/test.csv --cache-dir out/resized/340 \
        --checkpoint out/finetune/2_299/model.pt --out-dir out/tta --metrics out/metrics.json --params '{...}'
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss
from tqdm import tqdm

from pipeline import cli, plots, runtime
from pipeline.data import read_split, read_test_table
from pipeline.io import remove_stale_temporaries, save_npy, write_json
from pipeline.loaders import ImageDataset, make_loader
from pipeline.model import WeightsError, restore_model
from pipeline.transforms import train_transform, valid_transform


@torch.inference_mode()
def predict(model, loader, device: torch.device, amp: bool, desc: str) -> np.ndarray:
    """Log-probabilities (N, C) in loader order."""
    model.eval()
    outputs = []
    for x, _ in tqdm(loader, desc=desc, leave=False, disable=None):
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outputs.append(model(x).float().cpu())
    return torch.cat(outputs).numpy()


def tta_log_probs(model, frame: pd.DataFrame, cache_dir: str, params: dict, device: torch.device, amp: bool,
                  name: str) -> np.ndarray:
    """(n_aug + 1, N, C): pass 0 with the validation transform, passes 1..n_aug with the training augmentations."""
    size, n_aug = params["size"], params.get("n_aug", 4)
    labels = frame["y"] if "y" in frame else None
    plain = ImageDataset(cache_dir, frame["path"], labels, valid_transform(size))
    augmented = ImageDataset(cache_dir, frame["path"], labels,
                             train_transform(size, params.get("max_zoom", 1.1), params.get("augmentation", "side_on")))
    passes = []
    for index, dataset in enumerate([plain] + [augmented] * n_aug):
        loader = make_loader(dataset, params.get("batch_size", 64), False, params.get("num_workers", 0),
                             params.get("seed", 42) + index, device)
        passes.append(predict(model, loader, device, amp, f"TTA {name} pass {index}/{n_aug}"))
    return np.stack(passes)


def mean_probs(log_probs: np.ndarray) -> np.ndarray:
    return np.exp(log_probs).mean(axis=0)


def class_prior(train: pd.DataFrame, n_classes: int) -> np.ndarray:
    return np.bincount(train["y"], minlength=n_classes) / len(train)


def with_prior_for_unusable(probs: np.ndarray, usable: np.ndarray, prior: np.ndarray, unusable_paths) -> np.ndarray:
    """Every test id gets a row: an unreadable test image (skipped upstream) gets the training class prior."""
    full = np.tile(prior, (len(usable), 1))
    full[usable] = probs
    if unusable_paths:
        print(f"{len(unusable_paths)} unreadable test images get the training class prior: "
              f"{', '.join(unusable_paths)}", flush=True)
    return full


def valid_metrics(log_probs: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    labels = list(range(n_classes))
    plain, averaged = np.exp(log_probs[0]), mean_probs(log_probs)
    return {"valid_accuracy": float(accuracy_score(y, averaged.argmax(1))),
            "valid_logloss": float(log_loss(y, averaged, labels=labels)),
            "valid_accuracy_no_tta": float(accuracy_score(y, plain.argmax(1))),
            "valid_logloss_no_tta": float(log_loss(y, plain, labels=labels)),
            "n_aug": int(log_probs.shape[0] - 1), "n_valid": int(len(y))}


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__)
    parser.add_argument("--split-csv", required=True)
    parser.add_argument("--test-csv", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)
    params = args.params
    started = cli.announce("tta", params)
    device, amp = runtime.start(params, args.threads)
    train, valid, classes = read_split(args.split_csv)
    test = read_test_table(args.test_csv)
    try:
        model, meta = restore_model(args.checkpoint, params["arch"], classes)
    except WeightsError as error:
        cli.fail(str(error))
    model = model.to(device).to(memory_format=torch.channels_last)
    params = {**params, "size": meta["size"]}
    out_dir = Path(args.out_dir)
    remove_stale_temporaries(out_dir)
    valid_log_probs = tta_log_probs(model, valid, args.cache_dir, params, device, amp, "valid")
    usable = test["usable"].to_numpy()
    test_log_probs = tta_log_probs(model, test[usable], args.cache_dir, params, device, amp, "test")
    save_npy(mean_probs(valid_log_probs), out_dir / "valid_probs.npy")
    save_npy(with_prior_for_unusable(mean_probs(test_log_probs), usable, class_prior(train, len(classes)),
                                     test.loc[~usable, "path"].tolist()), out_dir / "test_probs.npy")
    metrics = {**valid_metrics(valid_log_probs, valid["y"].to_numpy(), len(classes)), "size": meta["size"],
               "classes": classes}
    matrix = confusion_matrix(valid["y"], mean_probs(valid_log_probs).argmax(1), labels=range(len(classes)))
    plots.confusion_matrix(matrix, classes, out_dir / "confusion_matrix.png",
                           f"valid, TTA ({metrics['n_aug']} aug): accuracy {metrics['valid_accuracy']:.3f}")
    write_json(metrics, args.metrics)
    print(f"valid accuracy {metrics['valid_accuracy_no_tta']:.4f} -> {metrics['valid_accuracy']:.4f} with TTA; "
          f"log loss {metrics['valid_logloss_no_tta']:.4f} -> {metrics['valid_logloss']:.4f}", flush=True)
    cli.finish("tta", started)


if __name__ == "__main__":
    main()
