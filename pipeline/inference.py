"""Predictions of a trained model over images: one pass, or TTA's plain pass plus augmented ones (fastai 0.7's
`learn.TTA()`); the TTA stage and `pipeline.stages.predict` both call these."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipeline import runtime
from pipeline.loaders import ImageDataset, inference_loader
from pipeline.transforms import train_transform, valid_transform


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
    """(n_aug + 1, N, C): pass 0 with the validation transform, passes 1..n_aug with the training augmentations.
    `params`: a complete slice of size, seed, n_aug and the transforms and loader sections."""
    size, n_aug, preprocessing = params["size"], params["n_aug"], params.get("preprocessing")
    labels = frame["y"] if "y" in frame else None
    plain = ImageDataset(cache_dir, frame["path"], labels, valid_transform(size, preprocessing=preprocessing))
    augmented = ImageDataset(cache_dir, frame["path"], labels,
                             train_transform(size, params["max_zoom"], params["augmentation"],
                                             preprocessing=preprocessing))
    passes = []
    for index, dataset in enumerate([plain] + [augmented] * n_aug):
        # In-process loading (num_workers 0) draws augmentations from the global generator: seeded per pass, a pass
        # is the same whatever ran before it (another checkpoint of a snapshot ensemble, the valid set's passes).
        torch.manual_seed(params["seed"] + index)
        passes.append(predict(model, inference_loader(dataset, params, device, seed=index), device, amp,
                              f"TTA {name} pass {index}/{n_aug}"))
    return np.stack(passes)
