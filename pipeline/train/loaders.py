"""Image datasets over the resize cache, and the DataLoaders every torch stage uses."""
from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import queue
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.compute import distributed
from pipeline.data.dataset import load_rgb, training_targets
from pipeline.train.fit import lone_last_batch
from pipeline.train.regularise import OFF, Regularisation
from pipeline.data.transforms import train_transform, valid_transform


class ImageDataset(Dataset):
    """Images under `root` (relative `paths`), with integer labels (-1 for the unlabelled test set), or with (N, C)
    soft targets (soft pseudo-labels, pipeline.data.training_targets), each item's a float32 tensor row."""

    def __init__(self, root: str | Path, paths, labels=None, transform=None):
        self.root = Path(root)
        self.paths = list(paths)
        labels = np.asarray(labels if labels is not None else [-1] * len(self.paths))
        self.soft = labels.ndim == 2
        self.labels = labels.astype(np.float32 if self.soft else np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = load_rgb(self.root / self.paths[index])
        target = torch.from_numpy(self.labels[index]) if self.soft else int(self.labels[index])
        return (self.transform(image) if self.transform else image), target


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies: a loader worker when the fork server does, the server when
    the stage does (worker_context). A worker orphaned by a killed stage (OOM killer, SIGKILL) can block for ever
    flushing its result queue, holding the job's log pipe open, so Snakemake would wait for the killed job for ever;
    the resize pool's forked workers exit by themselves (pipeline/compute/parallel.py)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the request took effect
            os._exit(1)


@functools.cache
def worker_context() -> multiprocessing.context.BaseContext:
    """Where loader workers come from: a fork server, started once per stage with torch and the loaders imported.

    Not a plain fork of the stage: on Python before 3.12 a child forked while another thread of the parent creates or
    deletes its interpreter state inherits CPython's runtime lock held and hangs for ever before running a line
    (python/cpython#112275). Torch's native threads do that; it hung a validation loader's worker of a torchrun
    train_head job in the suite for 15 minutes, 2026-12-07. The server is forked from nothing but a fresh
    interpreter, so nothing is mid-way there. It costs its start, about 3 s once per stage (a loader's workers start
    afresh each epoch, forked from it in milliseconds). Each worker runs the stage's module again, as multiprocessing
    does for `python -m`: preloaded in the server, that costs nothing."""
    context = multiprocessing.get_context("forkserver")
    main = getattr(sys.modules["__main__"], "__spec__", None)
    stage = [main.name] if main is not None and main.name.startswith("pipeline.") else []
    context.set_forkserver_preload(["pipeline.train.worker_server", *stage])
    return context


def _seed_worker(worker_id: int) -> None:
    die_with_parent()
    # torch seeds each worker's torch RNG from the loader's generator; NumPy needs the same.
    np.random.seed(torch.initial_seed() % 2**32)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int,
                device: torch.device, sampler=None) -> DataLoader:
    """A shuffled (training) loader drops a last batch of one image: BatchNorm cannot train on a single sample
    (torch raises "Expected more than 1 value per channel"), and 1 more image than a multiple of the batch size is
    a training set a user can have. Every other last batch is kept, as fastai 0.7 kept it."""
    generator = torch.Generator().manual_seed(seed)
    drop_last = (shuffle or sampler is not None) and lone_last_batch(len(sampler or dataset), batch_size)
    # Workers are not persistent: each epoch's workers are seeded afresh from the generator, which the training
    # loop reseeds per epoch, so an epoch's augmentations do not depend on the epochs before it (exact resume).
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=num_workers, generator=generator, worker_init_fn=_seed_worker, drop_last=drop_last,
                      pin_memory=device.type == "cuda", prefetch_factor=4 if num_workers > 0 else None,
                      multiprocessing_context=worker_context() if num_workers > 0 else None)


class Prefetched:
    """Iterates `loader` in a background thread, up to `depth` batches ahead, so decoding and transforming the next
    batch overlaps the model's compute without worker processes (which compete with torch's threads on a small
    machine and start afresh every epoch). JPEG decoding and torch's kernels release the GIL.

    Only for loaders whose consumer draws no random numbers while it iterates (inference, validation): the
    transforms here draw from torch's global generator in this thread, so a training step's dropout in the main
    thread would race with them. Training loaders keep their order of draws (exact resume) and use
    `num_workers` processes for overlap instead.
    """

    _END = object()

    def __init__(self, loader: DataLoader, depth: int = 2):
        self.loader, self.depth = loader, depth

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def __iter__(self):
        batches: queue.Queue = queue.Queue(self.depth)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    batches.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for batch in self.loader:
                    if not put(batch):
                        return
                put(self._END)
            except BaseException as error:  # re-raised in the consumer, where the stage reports it
                put(error)

        producer = threading.Thread(target=produce, name="prefetch", daemon=True)
        producer.start()
        try:
            while (item := batches.get()) is not self._END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            producer.join()


def overlapped(loader: DataLoader) -> DataLoader | Prefetched:
    """A prediction or validation loader whose next batches load while the model runs: by its worker processes, or
    by a `Prefetched` thread where it has none."""
    return loader if loader.num_workers > 0 else Prefetched(loader)


def inference_loader(dataset: Dataset, params: dict, device: torch.device, seed: int = 0) -> DataLoader | Prefetched:
    """The loader of a stage that only predicts (precompute, TTA, predict): in order, overlapped with the model.
    `params`: a complete slice of seed and the loader section."""
    return overlapped(make_loader(dataset=dataset, batch_size=params["batch_size"], shuffle=False,
                                  num_workers=params["num_workers"], seed=params["seed"] + seed, device=device))


def image_loaders(train: pd.DataFrame, valid: pd.DataFrame, cache_dir: str | Path, params: dict,
                  device: torch.device,
                  regularisation: Regularisation = OFF) -> tuple[DataLoader, DataLoader | Prefetched]:
    """Augmented, shuffled train loader and plain valid loader over the resize cache at `params['size']`; under
    torchrun, this rank's share of each (pipeline.compute.distributed). `params`: a complete slice of size, seed and the
    transforms and loader sections; preprocessing, when absent, is the default transform's. The training images
    also get the `regularisation`'s augmentation policy and random erasing. They learn `training_targets` (soft
    pseudo-labels where the split has them); the valid set is always scored against its integer labels."""
    size, seed = params["size"], params["seed"]
    preprocessing = params.get("preprocessing")
    augment = train_transform(size=size, max_zoom=params["max_zoom"], augmentation=params["augmentation"],
                              preprocessing=preprocessing, auto_augment=regularisation.auto_augment,
                              random_erasing=regularisation.random_erasing)
    train_set = ImageDataset(cache_dir, train["path"], training_targets(train), augment)
    valid_set = ImageDataset(cache_dir, valid["path"], valid["y"], valid_transform(size, preprocessing=preprocessing))
    workers = params["num_workers"]
    batch_size = distributed.per_rank_batch_size(params["batch_size"])
    train_loader = make_loader(dataset=train_set, batch_size=batch_size, shuffle=True, num_workers=workers, seed=seed,
                               device=device, sampler=distributed.train_sampler(train_set))
    valid_loader = make_loader(dataset=distributed.shard(valid_set), batch_size=batch_size, shuffle=False,
                               num_workers=workers, seed=seed, device=device)
    return train_loader, overlapped(valid_loader)
