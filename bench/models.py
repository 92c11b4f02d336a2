"""Benchmarks 1, 2 and 4 - the torch stages against their physical limits, measured side by side.

1 precompute: images/s of the precompute stage (resize cache -> the stage's prefetching loader -> eval forward ->
  memmap .npy) vs the same model forwarding a batch already in memory. Target >= 0.90x.
2 fine-tune: images/s of an augmented, unfrozen training epoch run by the stages' own `fit` (loader, train steps,
  SGDR bookkeeping, and the epoch's validation on one batch) vs the raw in-memory train step (forward, backward,
  SGD step). Target >= 0.85x.
4 head: one epoch of head training on cached activations vs one augmented frozen-body epoch over the same images,
  both through `fit`. Target >= 50x faster.

Every figure times the functions the stages call (`precompute_activations`, `inference_loader`, `image_loaders`,
`fit`), with the model placed as the stages place it (`runtime.on_device`: channels_last); the raw limits use the
same layout, the fastest for convolutions on CPU and GPU.

    python bench/models.py [--arch resnet34] [--size 224] [--n 256] [--batch-size 32] [--workers 0] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common import best_of, make_images, report
from pipeline.recipe import defaults as recipe_defaults
from pipeline.compute import precision, runtime
from pipeline.data.dataset import read_labels_csv
from pipeline.train.fit import DEFAULT_OPTIMIZER, EpochLog, FitSpec, Phase, TensorBatches, fit, train_step
from pipeline.train.loaders import ImageDataset, image_loaders, inference_loader
from pipeline.models.classifier import build_classifier
from pipeline.stages import demo_data
from pipeline.stages.precompute import precompute_activations
from pipeline.stages.resize import resize_cache
from pipeline.data.transforms import valid_transform


def loader_params(params: dict) -> dict:
    """`params` as a stage passes it to the loaders: with the recipe schema's defaults for the keys it leaves out."""
    return recipe_defaults.complete(params, ("seed", "transforms", "loader"))


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def stage_epoch(model, train_batches, valid_batches, lr: float, device: torch.device,
                chosen: precision.Precision) -> None:
    """One epoch as a training stage runs it: `fit` with one constant-lr cycle, validation included."""
    phase = Phase(name="bench", model=model, train_batches=train_batches, valid_batches=valid_batches, device=device,
                  log=EpochLog(None), precision=chosen)
    fit(phase, FitSpec(lr, 1), 0)
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
    parser.add_argument("--workers", type=int, default=0, help="num_workers (0: the stages' in-process prefetch)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_models")
    args = parser.parse_args()
    device = runtime.setup(args.threads, 0, args.device)
    # As a stage chooses (pipeline.compute.precision): each raw figure in the precision its stage ran in.
    chosen = precision.choose(amp=args.amp, device=device, arch=args.arch, size=args.size, batch_size=args.batch_size,
                              threads=torch.get_num_threads())
    print(chosen, flush=True)
    shorter_side = max(340, args.size)
    data = make_images(args.work / f"data_{args.n}", args.n, demo_data.ImageSizes(short=(375, 376), aspect=(4 / 3, 4 / 3)),
                       0.0)
    cache = args.work / f"resized_{shorter_side}_{args.n}"
    if not cache.exists():
        resize_cache(str(data), str(cache), "csv", ".jpg", shorter_side, 90, args.threads)
    frame = read_labels_csv(data)
    frame["y"] = pd.factorize(frame["label"], sort=True)[0]
    n, bs = len(frame), args.batch_size
    model = runtime.on_device(build_classifier(args.arch, "none", frame["y"].nunique()), device)
    batch = runtime.batch_on_device(torch.randn(bs, 3, args.size, args.size), device)
    labels = torch.randint(0, frame["y"].nunique(), (bs,), device=device)
    common = {"arch": args.arch, "size": args.size, "batch_size": bs, "images": n, "workers": args.workers,
              "threads": torch.get_num_threads(), "device": str(device), "amp_train": chosen.train,
              "amp_infer": chosen.infer}

    # 1. precompute vs raw forward
    model.eval()
    loader = inference_loader(ImageDataset(cache, frame["path"], frame["y"], valid_transform(args.size)),
                              loader_params({"batch_size": bs, "num_workers": args.workers}), device)

    @torch.inference_mode()
    def raw_forward():
        for _ in range(n // bs):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=chosen.infer):
                model.features(batch)
        synchronise(device)

    def stage_forward(batches=loader):
        precompute_activations(model, batches, args.work / "activations.npy", device, chosen.infer, "precompute")
        synchronise(device)

    raw_forward()  # warm-up: kernels, allocator
    raw_s = best_of(2, raw_forward) * n / (n // bs * bs)
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    stage_s = best_of(2, stage_forward)
    cores_busy = (time.process_time() - cpu_started) / (time.perf_counter() - wall_started)
    # What the background prefetch buys: the same stage with its loader iterated in the stage's own thread.
    serial_s = best_of(2, lambda: stage_forward(getattr(loader, "loader", loader)))
    report("precompute", {**common, "raw_images_per_s": round(n / raw_s, 1),
                          "stage_images_per_s": round(n / stage_s, 1),
                          "stage_without_prefetch_images_per_s": round(n / serial_s, 1),
                          "stage_cpu_cores_busy": round(cores_busy, 2), **peak_memory(device)},
           raw_s / stage_s, ">= 0.90x", raw_s / stage_s >= 0.90)

    # 2. augmented fine-tune epoch vs raw train step
    model.unfreeze()
    train_loader, valid_loader = image_loaders(frame, frame.head(bs), cache,
                                               loader_params({"size": args.size, "batch_size": bs,
                                                              "num_workers": args.workers}), device)
    optimizer = DEFAULT_OPTIMIZER.make(model, 1e-3)

    def raw_train():
        model.train()
        for _ in range(n // bs):
            train_step(model, optimizer, batch, labels, device, chosen.train)
        synchronise(device)

    def raw_train_contiguous():
        """The same steps in the NCHW layout the stages trained in before: what channels_last buys."""
        model.train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=chosen.train):
            for _ in range(n // bs):
                optimizer.zero_grad(set_to_none=True)
                torch.nn.functional.nll_loss(model(batch.contiguous()).float(), labels).backward()
                optimizer.step()
        synchronise(device)

    def stage_train(batches=train_loader):
        stage_epoch(model, batches, valid_loader, 1e-3, device, chosen)

    raw_train()
    raw_s = best_of(2, raw_train) * n / (n // bs * bs)
    stage_s = best_of(2, stage_train)
    model.to(memory_format=torch.contiguous_format)
    raw_train_contiguous()
    contiguous_s = best_of(2, raw_train_contiguous) * n / (n // bs * bs)
    model.to(memory_format=torch.channels_last)
    figures = {"raw_images_per_s": round(n / raw_s, 1), "raw_contiguous_images_per_s": round(n / contiguous_s, 1),
               "stage_images_per_s": round(n / stage_s, 1)}
    if args.workers == 0:  # would one loader worker process overlap the augmentation better than none?
        one_worker, _ = image_loaders(frame, frame.head(bs), cache,
                                      loader_params({"size": args.size, "batch_size": bs, "num_workers": 1}), device)
        figures["stage_one_worker_images_per_s"] = round(n / best_of(2, lambda: stage_train(one_worker)), 1)
    report("finetune", {**common, **figures, **peak_memory(device)}, raw_s / stage_s, ">= 0.85x", raw_s / stage_s >= 0.85)

    # 4. head epoch on activations vs augmented frozen-body epoch
    model.freeze()
    activations = torch.from_numpy(np.load(args.work / "activations.npy").copy())
    targets = torch.tensor(frame["y"].to_numpy())
    head_batches = TensorBatches(activations, targets, bs, True, torch.Generator().manual_seed(0))
    head_valid = TensorBatches(activations[:bs], targets[:bs], bs)

    def head_epoch():
        stage_epoch(model.head, head_batches, head_valid, 1e-2, device, chosen)

    def frozen_epoch():
        stage_epoch(model, train_loader, valid_loader, 1e-2, device, chosen)

    head_s, frozen_s = best_of(3, head_epoch), best_of(1, frozen_epoch)
    report("head", {**common, "head_epoch_s": round(head_s, 4), "frozen_body_epoch_s": round(frozen_s, 2),
                    **peak_memory(device)},
           frozen_s / head_s, ">= 50x", frozen_s / head_s >= 50)


if __name__ == "__main__":
    main()
