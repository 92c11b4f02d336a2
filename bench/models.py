"""Benchmarks 1, 2 and 4 - the torch stages against their physical limits, measured side by side.

1 precompute: images/s of the precompute stage (resize cache -> DataLoader -> eval forward -> memmap .npy) vs the
  same model forwarding a batch already in memory. Target >= 0.90x.
2 fine-tune: images/s of an augmented, unfrozen training epoch (DataLoader + train step) vs the raw in-memory train
  step (forward, backward, SGD step). Target >= 0.85x.
4 head: one epoch of head training on cached activations vs one augmented frozen-body epoch over the same images.
  Target >= 50x faster.

    python bench/models.py [--arch resnet34] [--size 224] [--n 256] [--batch-size 32] [--workers 2] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common import best_of, make_images, report
from pipeline import demo, runtime
from pipeline.data import read_labels_csv
from pipeline.fit import TensorBatches, make_optimizer, train_step
from pipeline.loaders import ImageDataset, image_loaders, make_loader
from pipeline.model import build_classifier
from pipeline.precompute import precompute_activations
from pipeline.resize import resize_cache
from pipeline.transforms import valid_transform


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def epoch(model, optimizer, batches, device: torch.device, amp: bool) -> None:
    """One training epoch over `batches`, as the training stages run it."""
    model.train()
    for x, y in batches:
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        train_step(model, optimizer, x, y, device, amp)
    synchronise(device)


def peak_memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    peak = torch.cuda.max_memory_allocated() / 2**20
    torch.cuda.reset_peak_memory_stats()
    return {"gpu_peak_mib": round(peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_models")
    args = parser.parse_args()
    device = runtime.setup(args.threads, 0, args.device)
    amp = runtime.use_amp(args.amp, device)
    shorter_side = max(340, args.size)
    data = make_images(args.work / f"data_{args.n}", args.n, demo.ImageSizes(short=(375, 376), aspect=(4 / 3, 4 / 3)),
                       0.0)
    cache = args.work / f"resized_{shorter_side}_{args.n}"
    if not cache.exists():
        resize_cache(str(data), str(cache), "csv", ".jpg", shorter_side, 90, args.threads)
    frame = read_labels_csv(data)
    frame["y"] = pd.factorize(frame["label"], sort=True)[0]
    n, bs = len(frame), args.batch_size
    model = build_classifier(args.arch, "none", frame["y"].nunique()).to(device).to(memory_format=torch.channels_last)
    batch = torch.randn(bs, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, frame["y"].nunique(), (bs,), device=device)
    common = {"arch": args.arch, "size": args.size, "batch_size": bs, "images": n, "workers": args.workers,
              "threads": torch.get_num_threads(), "device": str(device), "amp": amp}

    # 1. precompute vs raw forward
    model.eval()
    loader = make_loader(ImageDataset(cache, frame["path"], frame["y"], valid_transform(args.size)), bs, False,
                         args.workers, 0, device)

    @torch.inference_mode()
    def raw_forward():
        for _ in range(n // bs):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                model.features(batch)
        synchronise(device)

    def stage_forward():
        precompute_activations(model, loader, args.work / "activations.npy", device, amp, "precompute")
        synchronise(device)

    raw_forward()  # warm-up: kernels, allocator
    raw_s = best_of(2, raw_forward) * n / (n // bs * bs)
    stage_s = best_of(2, stage_forward)
    report("precompute", {**common, "raw_images_per_s": round(n / raw_s, 1),
                          "stage_images_per_s": round(n / stage_s, 1), **peak_memory(device)}, raw_s / stage_s, ">= 0.90x",
           raw_s / stage_s >= 0.90)

    # 2. augmented fine-tune epoch vs raw train step
    model.unfreeze()
    train_loader, _ = image_loaders(frame, frame.head(bs), cache, {"size": args.size, "batch_size": bs,
                                                                   "num_workers": args.workers}, device)
    optimizer = make_optimizer(model, 1e-3)

    def raw_train():
        model.train()
        for _ in range(n // bs):
            train_step(model, optimizer, batch, labels, device, amp)
        synchronise(device)

    def stage_train():
        epoch(model, optimizer, train_loader, device, amp)

    raw_train()
    raw_s = best_of(2, raw_train) * n / (n // bs * bs)
    stage_s = best_of(2, stage_train)
    report("finetune", {**common, "raw_images_per_s": round(n / raw_s, 1), "stage_images_per_s": round(n / stage_s, 1),
                        **peak_memory(device)},
           raw_s / stage_s, ">= 0.85x", raw_s / stage_s >= 0.85)

    # 4. head epoch on activations vs augmented frozen-body epoch
    model.freeze()
    activations = torch.from_numpy(np.load(args.work / "activations.npy").copy())
    head_batches = TensorBatches(activations, torch.as_tensor(frame["y"].to_numpy()), bs, True,
                                 torch.Generator().manual_seed(0))
    head_optimizer = make_optimizer(model.head, 1e-2)
    frozen_optimizer = make_optimizer(model, 1e-2)

    def head_epoch():
        epoch(model.head, head_optimizer, head_batches, device, amp)

    def frozen_epoch():
        epoch(model, frozen_optimizer, train_loader, device, amp)

    head_s, frozen_s = best_of(3, head_epoch), best_of(1, frozen_epoch)
    report("head", {**common, "head_epoch_s": round(head_s, 4), "frozen_body_epoch_s": round(frozen_s, 2),
                    **peak_memory(device)},
           frozen_s / head_s, ">= 50x", frozen_s / head_s >= 50)


if __name__ == "__main__":
    main()
