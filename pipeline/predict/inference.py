"""Predictions of a trained model over images: one pass, or TTA's plain pass plus augmented ones (fastai 0.7's
`learn.TTA()`); the TTA stage and `pipeline.stages.predict` both call these."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipeline.offline import images as offline
from pipeline.compute import runtime
from pipeline.train.loaders import ImageDataset, inference_loader
from pipeline.models.classifier import ImageClassifier
from pipeline.data.transforms import DEFAULT_PREPROCESSING, FixedView, train_transform, valid_transform


@torch.inference_mode()
def predict(model, loader, device: torch.device, amp: bool, desc: str) -> np.ndarray:
    """Log-probabilities (N, C) in loader order."""
    model.eval()
    outputs = []
    for x, _ in tqdm(loader, desc=desc, leave=False, disable=None):
        x = runtime.batch_on_device(x, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outputs.append(model(x).float().cpu())
    return torch.cat(outputs).numpy()


def tta_log_probs(model, frame: pd.DataFrame, cache_dir: str, params: dict, device: torch.device, amp: bool,
                  name: str) -> np.ndarray:
    """(n_aug + 1, N, C): pass 0 the plain view, passes 1..n_aug augmented: with `mode: random` (fastai 0.7) the
    validation transform, then the training augmentations drawn at random; with `mode: deterministic` the first
    n_aug + 1 fixed views of `pipeline.offline.tta_views`, as the bundle computes them.
    `params`: a complete slice of size, seed, n_aug, mode and the transforms and loader sections."""
    if params["mode"] == "deterministic":
        return fixed_view_log_probs(model=model, frame=frame, cache_dir=cache_dir, params=params, device=device,
                                    amp=amp, name=name)
    size, n_aug, preprocessing = params["size"], params["n_aug"], params.get("preprocessing")
    labels = frame["y"] if "y" in frame else None
    plain = ImageDataset(cache_dir, frame["path"], labels, valid_transform(size, preprocessing=preprocessing))
    augmented = ImageDataset(cache_dir, frame["path"], labels,
                             train_transform(size=size, max_zoom=params["max_zoom"],
                                             augmentation=params["augmentation"], preprocessing=preprocessing))
    passes = []
    for index, dataset in enumerate([plain] + [augmented] * n_aug):
        # In-process loading (num_workers 0) draws augmentations from the global generator: seeded per pass, a pass
        # is the same whatever ran before it (another checkpoint of a snapshot ensemble, the valid set's passes).
        torch.manual_seed(params["seed"] + index)
        passes.append(predict(model, inference_loader(dataset, params, device, seed=index), device, amp,
                              f"TTA {name} pass {index}/{n_aug}"))
    return np.stack(passes)


def fixed_view_log_probs(model, frame: pd.DataFrame, cache_dir: str, params: dict, device: torch.device, amp: bool,
                         name: str) -> np.ndarray:
    """Deterministic TTA: each view's uint8 pixels through the model with its normalisation inside
    (`ImageClassifier`, the module the bundle exports), so a pass here and in the bundle differ only by the runtime."""
    size, n_aug = params["size"], params["n_aug"]
    preprocessing = params.get("preprocessing") or DEFAULT_PREPROCESSING
    views = offline.tta_views(params["augmentation"], params["max_zoom"])[:n_aug + 1]
    if len(views) < n_aug + 1:
        raise ValueError(f"tta.n_aug {n_aug} with mode deterministic: augmentation {params['augmentation']} and "
                         f"max_zoom {params['max_zoom']} give {len(views) - 1} views besides the plain one")
    labels = frame["y"] if "y" in frame else None
    classifier = ImageClassifier(model, preprocessing).to(device)
    passes = []
    for index, spec in enumerate(views):
        dataset = ImageDataset(cache_dir, frame["path"], labels, FixedView(size, preprocessing, spec))
        described = f"{spec['crop']} x{spec['zoom']:g}, {spec['symmetry']}"
        passes.append(predict(classifier, inference_loader(dataset, params, device), device, amp,
                              f"TTA {name} view {index}/{n_aug} ({described})"))
    return np.stack(passes)
