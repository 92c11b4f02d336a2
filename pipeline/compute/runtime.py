"""Device, threads and seeds for the torch stages: one place so every stage runs the same way."""
from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

from pipeline import cli
from pipeline.compute import distributed
from pipeline.compute import gpus


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


def start(params: dict, threads: int) -> tuple[torch.device, bool]:
    """(device, use bf16 autocast) for a torch stage, from its (complete) params slice."""
    device = setup(threads, params["seed"], params["device"])
    return device, use_amp(params["amp"], device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_amp(amp: str, device: torch.device) -> bool:
    """bf16 autocast: 'auto' turns it on on GPU and on CPUs with native bf16; 'on' / 'off' force it."""
    return amp == "on" or (amp == "auto" and (device.type == "cuda" or cpu_has_native_bf16()))


def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX: bf16 matmuls and convolutions run in hardware. Elsewhere oneDNN emulates bf16: its speed
    varies from CPU to CPU while the lost precision is certain, so 'auto' leaves it off there."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


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

