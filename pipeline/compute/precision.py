"""bf16 autocast or float32, chosen per model and per phase: training (the step) and inference (prediction passes,
precompute, and each epoch's validation).

`amp: on` / `off` force bf16 / float32 for both phases. `amp: auto`:
  on a GPU                        bf16 for both;
  on a CPU without native bf16    float32 for both: oneDNN emulates bf16 there, its speed varies from CPU to CPU while
                                  the lost precision is certain;
  on a CPU with native bf16       measured: bf16 for a phase only where it is at least 10 % faster (bf16 costs
  (avx512_bf16 or AMX)            precision, so a tie goes to float32). Native bf16 is not faster everywhere: on one
                                  such CPU (bench/README.md, issue 34: batch 32, 2 threads) Lite0 trained at 146 img/s
                                  in float32 and 113 in bf16 at 72 px, while its inference ran 821 against 1111,
                                  and resnet34's training 46 against 76 at 96 px.
The measurement builds the arch with random weights and times a training step (forward, loss, backward, optimiser
step) and an inference forward on a random batch at the stage's size, batch size and threads, in both precisions,
alternated, after a warm-up of each (4 s for Lite0 at 72 px on 2 threads, longer for larger models and sizes), once
per machine. The answer is kept in the user's cache folder beside the backbone check's (`pipeline.io.USER_CACHE_DIR`),
under a key of what decides it: the CPU's model and bf16 flags, the torch version, arch, size, batch size, threads
and PROBE_VERSION; with the figures, so the log can say why. Kept, not measured anew by every job, so that every run
on the machine (a killed job and its rerun, say) trains alike. Other processes competing for the CPUs skew the figures
(on this project's 2-core machine, two busy processes beside the probe turned resnet34's inference from 157 vs 271
img/s into 25 vs 13): the probe records how long its threads waited for a CPU (Linux's schedstat), and the log says
when that was long enough to distrust the answer, and that deleting the file measures again.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from pipeline.io import USER_CACHE_DIR, read_json, write_json

TIMM_PREFIX = "timm/"  # pipeline.models.backbones' (the probe builds an arch as it resolves one)
# Raised whenever the measurement changes, so that no answer measured by older code is trusted.
PROBE_VERSION = 1
# bf16 for a phase only when it runs at least this much faster than float32.
MIN_SPEEDUP = 1.10
# Each phase: one warm-up step per precision (oneDNN builds its kernels), then up to TIMED_ROUNDS timed ones while
# they fit in ROUND_SECONDS (a large model at a large size is timed once: its steps are long enough to time alone).
TIMED_ROUNDS, ROUND_SECONDS = 3, 3.0
# Threads runnable but waiting for a CPU this share of the time or more: the figures may be skewed, the log says so.
BUSY_WAIT_SHARE = 0.2
PHASES = ("train", "infer")
CACHE_DIR = USER_CACHE_DIR


@dataclass(frozen=True)
class Precision:
    """Whether a stage runs its training steps (`train`) and its inference (`infer`: prediction passes, precompute,
    validation) under bf16 autocast, and why (for the log)."""

    train: bool
    infer: bool
    reason: str

    def __str__(self) -> str:
        return f"precision: training {dtype_name(self.train)}, inference {dtype_name(self.infer)} ({self.reason})"


FP32 = Precision(train=False, infer=False, reason="float32 unless told otherwise")


def dtype_name(bf16: bool) -> str:
    return "bf16" if bf16 else "fp32"


def choose(amp: str, device: torch.device, arch: str, size: int, batch_size: int, threads: int,
           cache_dir: Path | None = None) -> Precision:
    """The precision of each phase for `arch` at `size` px and `batch_size` on `device` with `threads` CPU threads,
    as the recipe's `amp` asks (see the module docstring); measured answers are kept in `cache_dir` (default
    CACHE_DIR)."""
    if amp in ("on", "off"):
        return Precision(train=amp == "on", infer=amp == "on", reason=f"amp {amp}")
    if amp != "auto":
        raise ValueError(f"amp {amp!r}: auto, on or off")
    if device.type == "cuda":
        return Precision(train=True, infer=True, reason="amp auto, on a GPU")
    if not cpu_has_native_bf16():
        return Precision(train=False, infer=False, reason="amp auto, on a CPU without native bf16 (avx512_bf16 or "
                                                          "AMX), which would emulate it: slower, and less precise")
    return measured(arch=arch, size=size, batch_size=batch_size, threads=threads,
                    cache_dir=Path(cache_dir or CACHE_DIR))


def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX: bf16 matmuls and convolutions run in hardware. Elsewhere oneDNN emulates bf16: its speed
    varies from CPU to CPU while the lost precision is certain, so 'auto' leaves it off there."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def measured(arch: str, size: int, batch_size: int, threads: int, cache_dir: Path) -> Precision:
    """The precision the probe's figures pick: measured once, then read from `cache_dir`."""
    decided_by = {"version": PROBE_VERSION, "cpu": cpu_name(), "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
                  "amx": torch.cpu._is_amx_tile_supported(), "torch": torch.__version__, "arch": arch, "size": size,
                  "batch_size": batch_size, "threads": threads}
    cached = cache_dir / f"precision-{cache_key(decided_by)}.json"
    if not cached.is_file():
        figures = {**decided_by, **measure(arch=arch, size=size, batch_size=batch_size, threads=threads)}
        # Another process of this machine may have measured the same key meanwhile: its answer stands, so that every
        # run here (a killed job and its rerun, say) trains in one precision.
        if not cached.is_file():
            write_json(figures, cached)
    return from_figures(read_json(cached), cached)


def cache_key(decided_by: dict) -> str:
    return hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()[:16]


def from_figures(figures: dict, cached: Path) -> Precision:
    """bf16 for each phase it runs at least MIN_SPEEDUP times faster than float32, and the figures that say so."""
    rates = figures["img_per_s"]
    bf16 = {phase: rates[phase]["bf16"] / rates[phase]["fp32"] >= MIN_SPEEDUP for phase in PHASES}
    threads = f"{figures['threads']} thread{'s' * (figures['threads'] != 1)}"
    reason = (f"amp auto, measured on this CPU for {figures['arch']} at {figures['size']} px, batch "
              f"{figures['batch_size']}, {threads}: training {rates['train']['fp32']:.0f} vs "
              f"{rates['train']['bf16']:.0f} img/s fp32/bf16, inference {rates['infer']['fp32']:.0f} vs "
              f"{rates['infer']['bf16']:.0f} img/s; bf16 where at least {MIN_SPEEDUP - 1:.0%} faster; cached {cached}")
    if (figures.get("waited_for_cpu") or 0) >= BUSY_WAIT_SHARE:
        reason += (f"; measured while other processes held the CPUs (its threads waited for one "
                   f"{figures['waited_for_cpu']:.0%} of the time), which may have skewed it: delete the file to "
                   "measure again on a quieter machine")
    return Precision(train=bf16["train"], infer=bf16["infer"], reason=reason)


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform says."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(arch: str, size: int, batch_size: int, threads: int) -> dict:
    """Images per second of a training step and of an inference forward of `arch` (random weights, channels_last, a
    random batch), in float32 and under bf16 autocast, `img_per_s`: {"train": {"fp32": ..., "bf16": ...}, "infer":
    {...}}; and `waited_for_cpu`, the share of its threads' time they spent waiting for a CPU (None where unknown).
    Each is timed after a warm-up (see TIMED_ROUNDS), float32 and bf16 alternated so that a change in the machine's
    speed (another job starting) hits both alike, and its fastest round kept. Draws from its own random generator
    state, so a stage that measured and one that read the answer go on drawing the same numbers."""
    kept_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = probe_network(arch).to(memory_format=torch.channels_last)
            x = torch.randn(batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
            steps = {"train": training_step(model, x), "infer": inference_step(model, x)}
            waited_before, started = cpu_wait_seconds(), time.perf_counter()
            rates = {phase: fastest_rates(steps[phase], batch_size) for phase in PHASES}
            waited, elapsed = cpu_wait_seconds(), time.perf_counter() - started
    finally:
        torch.set_num_threads(kept_threads)
    share = None if waited is None or waited_before is None else round((waited - waited_before) / elapsed / threads, 3)
    return {"img_per_s": rates, "waited_for_cpu": share}


def cpu_wait_seconds() -> float | None:
    """How long this process's threads have been runnable but waiting for a CPU (Linux's /proc/self/task/*/schedstat,
    its second field, in ns); None where the kernel does not say."""
    try:
        return sum(int((task / "schedstat").read_text().split()[1]) for task in Path("/proc/self/task").iterdir()) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def probe_network(arch: str) -> torch.nn.Module:
    """`arch`'s ImageNet classifier with random weights, from the library `pipeline.models.backbones.resolve` picks
    for it (`timm/<name>`, then torchvision's names, then timm's). compute/ sits below models/ in the layers, so this
    cannot ask it; `tests/test_precision.py` holds the two to the same answer."""
    from torchvision import models

    if not arch.startswith(TIMM_PREFIX) and arch in models.list_models(module=models):
        return models.get_model(arch, weights=None)
    return importlib.import_module("timm").create_model(arch.removeprefix(TIMM_PREFIX), pretrained=False)


def training_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[bool], None]:
    """One SGD step on `x` (cross-entropy against random labels), in bf16 autocast or not."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    y = torch.randint(0, 2, (len(x),))

    def step(bf16: bool) -> None:
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def inference_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[bool], None]:
    """One forward of `x` in eval mode, in bf16 autocast or not."""

    def step(bf16: bool) -> None:
        model.eval()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x).float()

    return step


def fastest_rates(step: Callable[[bool], None], batch_size: int) -> dict[str, float]:
    """{"fp32": img/s, "bf16": img/s} of `step`'s fastest timed round in each precision."""
    warm_up = sum(timed(step, bf16) for bf16 in (False, True))
    rounds = max(1, min(TIMED_ROUNDS, int(ROUND_SECONDS / warm_up)))
    seconds = {False: [], True: []}
    for _ in range(rounds):
        for bf16 in (False, True):
            seconds[bf16].append(timed(step, bf16))
    return {dtype_name(bf16): round(batch_size / min(times), 1) for bf16, times in seconds.items()}


def timed(step: Callable[[bool], None], bf16: bool) -> float:
    started = time.perf_counter()
    step(bf16)
    return time.perf_counter() - started
