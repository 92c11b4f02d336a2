"""Device, threads, seeds and precision for the torch stages: one place so every stage runs the same way."""
from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

from pipeline import cli
from pipeline.compute import distributed
from pipeline.compute import gpus
from pipeline.compute import precision
from pipeline.compute.precision import Precision


def setup(threads: int, seed: int, device: str = "auto") -> torch.device:
    """Pin CPU threads, seed every generator, pick the device; deterministic kernels on CPU.

    Under torchrun each rank takes its share of `threads` and its own GPU (see pipeline.compute.gpus)."""
    world_size = distributed.launched_world_size()
    torch.set_num_threads(max(1, threads // world_size))
    seed_everything(seed)
    chosen = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    if chosen.type == "cuda" and chosen.index is None:
        count = torch.cuda.device_count()
        if world_size > count:
            cli.fail(f"{world_size} processes need {world_size} GPUs; {count} visible")
        chosen = torch.device("cuda", gpus.pick(count, distributed.local_rank()))
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
        # Speed over bit-exactness on GPU: cuDNN autotuning picks kernels per run (see docs/reruns.md, Determinism).
        torch.backends.cudnn.benchmark = True
    else:
        torch.use_deterministic_algorithms(True)
    distributed.start(chosen)
    rank = f", rank {distributed.rank()} of {world_size}" if world_size > 1 else ""
    print(f"device {chosen}, {torch.get_num_threads()} CPU threads, seed {seed}{rank}", flush=True)
    return chosen


# The top-level recipe keys every torch stage's slice has, for its declaration (pipeline.recipe.defaults).
RECIPE_KEYS = ("seed", "device", "amp")


def start(params: dict, threads: int) -> tuple[torch.device, Precision]:
    """(device, bf16 autocast or not for training and for inference) for a torch stage, from its (complete) params
    slice: seed, device, amp, and the arch, size and batch size the precision is chosen for."""
    device = setup(threads, params["seed"], params["device"])
    return device, chosen_precision(params, device)


def chosen_precision(params: dict, device: torch.device) -> Precision:
    """`pipeline.compute.precision.choose` for the slice's amp, arch, size and (per process) batch size, at this
    process's threads; logged with its reason. Under torchrun rank 0 chooses for every rank: ranks measuring side by
    side could disagree, and the checkpoint, written by rank 0, says what validation ran in."""
    chosen = None
    if distributed.is_main():
        chosen = precision.choose(amp=params["amp"], device=device, arch=params["arch"], size=params["size"],
                                  batch_size=distributed.per_rank_batch_size(params["batch_size"]),
                                  threads=torch.get_num_threads())
    chosen = distributed.from_main(chosen)
    print(chosen, flush=True)
    return chosen


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def on_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model on `device` in channels_last (NHWC), the layout of cuDNN's fast AMP kernels and oneDNN's AVX-512 ones
    (neutral on AVX2-only CPUs: bench/README.md); every stage that trains or predicts uses it, with its batches
    converted by `batch_on_device`."""
    return model.to(device, memory_format=torch.channels_last)


def batch_on_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """An image batch in channels_last on `device` (other tensors, such as activations, only moved)."""
    if x.dim() == 4:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)


def state_digest(module: torch.nn.Module) -> str:
    """A digest of a module's weights and buffers, to prove two stages use the very same backbone."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]

