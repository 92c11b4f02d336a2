"""Data-parallel training under torchrun (recipe key `devices: N`): the head's augmented fits and each fine-tune
size run as N processes, one per GPU (gloo processes on CPU), with DistributedDataParallel.

The recipe's batch_size stays the batch the optimiser sees: each of the N processes loads batch_size / N images,
DDP averages their gradients, and an epoch has as many steps as on one device, so the SGDR schedule is unchanged.
Rank 0 alone prints, writes logs, plots, checkpoints, snapshots and resume points; validation is split across the
ranks and its sums are added up, so every rank sees the whole validation set's metrics.

Outside torchrun (WORLD_SIZE unset or 1) every function here is the single-process no-op.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler, Subset

from pipeline import cli


def launched_world_size() -> int:
    """How many processes torchrun started for this stage (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def start(device: torch.device) -> None:
    """Join the process group torchrun describes in the environment; quiet every rank's stdout but rank 0's."""
    if launched_world_size() <= 1 or active():
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    if not is_main():
        sys.stdout = open(os.devnull, "w")  # errors still reach stderr


def finish() -> None:
    if active():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel (rank 0's weights broadcast to all); `model` itself outside torchrun.
    Wrap once the trainable layer groups are set: DDP syncs the gradients of the parameters that need them then."""
    if not active():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def per_rank_batch_size(batch_size: int) -> int:
    n = world_size()
    if batch_size % n:
        cli.fail(f"batch_size {batch_size} does not split evenly over {n} processes (devices)")
    return batch_size // n


def train_sampler(dataset: Dataset) -> DistributedSampler | None:
    """This rank's share of a shuffled epoch (None outside torchrun: the loader shuffles by itself). The training
    loop sets its epoch to the epoch's seed, so every rank draws the same permutation and takes its own slice."""
    return DistributedSampler(dataset, shuffle=True, seed=0, drop_last=False) if active() else None


def seed_sampler(batches, epoch_seed: int) -> int:
    """Give an epoch's DistributedSampler the epoch's seed, so every rank draws the same permutation and takes its
    own slice; returns the seed for this rank's own draws (augmentation, dropout), which differ rank to rank.
    Batches without one (the precomputed activations, which every rank fits alike) keep the epoch's seed."""
    sampler = getattr(batches, "sampler", None)
    if not isinstance(sampler, DistributedSampler):
        return epoch_seed
    sampler.set_epoch(epoch_seed)
    return epoch_seed + rank()


def shard(dataset: Dataset) -> Dataset:
    """Every world_size-th item from this rank's: the ranks cover the validation set exactly once between them."""
    return Subset(dataset, range(rank(), len(dataset), world_size())) if active() else dataset


def sum_over_ranks(*values: float) -> list[float]:
    if not active():
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def from_main(value):
    """Rank 0's `value` (anything picklable) on every rank; `value` itself outside torchrun."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's BatchNorm running statistics on every rank (each rank updated its own in its last forward)."""
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
