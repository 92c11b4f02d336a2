"""Training: fastai 0.7's `fit(lr, n_cycle, cycle_len, cycle_mult)` with SGDR, `lr_find`, and the per-epoch log.

SGD with momentum 0.9 and no weight decay (0.7's), or AdamW (fastai v2's default; `OptimizerSpec`), NLL loss on
log-softmax outputs, a new optimiser per fit (as 0.7).
SGDR is torch's `CosineAnnealingWarmRestarts`, stepped per batch, plus 0.7's warm-up: the first 1/20 of the
first cycle runs at lr/100. The printed train loss is 0.7's bias-corrected EMA (beta 0.98).

Every epoch draws its randomness (shuffling, augmentation, dropout) from a seed derived from (seed, phase, fit,
epoch), and a `ResumePoint` saves the training state after each epoch: a killed job resumes from its last
completed epoch and ends with the same weights as an uninterrupted run (on CPU).

`run_fits` can hand the model over at the end of each SGDR cycle of its last fit (`on_cycle_end`), which is
what fastai 0.7's `cycle_save_name` did for snapshot ensembles.

A `Phase` holds what a phase's fits share (model, batches, device, log, resume point, optimiser, regularisers);
`fit` is a short loop over the named steps of a `FitLoop`: per batch the warm-up, the (mixed) batch's step, the EMA
of the weights, the records and the scheduler; per epoch the validated log row, the cycle-end callback and the
resume point.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import itertools
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm  # not tqdm.auto: its bar calls iter() on a DataLoader at creation, starting a
# second set of loader workers each epoch and drawing from the loader's generator

from pipeline.compute import distributed
from pipeline.recipe import defaults as recipe_defaults
from pipeline.train import regularise
from pipeline.io import atomic_path
from pipeline.train.regularise import OFF, BatchMixer, Regularisation
from pipeline.compute.runtime import batch_on_device
from pipeline.compute.precision import FP32, Precision

EMA_BETA = 0.98
# The schema's defaults (their one home, config/schema.yaml) for fits called without a recipe: tests, benchmarks.
DEFAULTS = recipe_defaults.defaults(("seed", "train.warmup", "train.optimizer", "train.weight_decay"))


@dataclass(frozen=True)
class FitSpec:
    """One `learn.fit(lr, n_cycle, cycle_len=None, cycle_mult=1)` call."""

    lr: float | Sequence[float]
    n_cycle: int
    cycle_len: int | None = None
    cycle_mult: int = 1

    @classmethod
    def from_config(cls, fit: dict) -> "FitSpec":
        """From one item of a recipe's `fits`, the schema filling what it omits."""
        fit = recipe_defaults.complete_fit(fit)
        return cls(fit["lr"], fit["n_cycle"], fit["cycle_len"], fit["cycle_mult"])

    @property
    def epochs(self) -> int:
        if not self.cycle_len:
            return self.n_cycle
        return sum(self.cycle_len * self.cycle_mult ** i for i in range(self.n_cycle))

    @property
    def cycle_ends(self) -> list[int]:
        """The (0-based) epoch each SGDR cycle ends with; none without cycle_len, where the lr never restarts."""
        if not self.cycle_len:
            return []
        lengths = (self.cycle_len * self.cycle_mult ** i for i in range(self.n_cycle))
        return [end - 1 for end in itertools.accumulate(lengths)]

    def __str__(self) -> str:
        extra = f", cycle_len={self.cycle_len}, cycle_mult={self.cycle_mult}" if self.cycle_len else ""
        return f"fit({self.lr}, {self.n_cycle}{extra})"


def lone_last_batch(n_samples: int, batch_size: int) -> bool:
    """Whether batching leaves a last batch of one sample, on which BatchNorm cannot train."""
    return n_samples > 1 and n_samples % batch_size == 1


class TensorBatches:
    """Mini-batches of in-memory tensors (the precomputed activations): one indexing op per batch, no Dataset."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
                 generator: torch.Generator | None = None):
        self.x, self.y, self.batch_size, self.shuffle, self.generator = x, y, batch_size, shuffle, generator

    def __len__(self) -> int:
        return math.ceil(self._n_used() / self.batch_size)

    def _n_used(self) -> int:
        """Shuffled (training) batches leave out a last batch of one: the head's BatchNorm cannot train on it."""
        return len(self.x) - (self.shuffle and lone_last_batch(len(self.x), self.batch_size))

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=self.generator) if self.shuffle else torch.arange(len(self.x))
        for start in range(0, self._n_used(), self.batch_size):
            index = order[start: start + self.batch_size]
            yield self.x[index], self.y[index]


def layer_group_lrs(model: nn.Module, lr) -> list[tuple[list[nn.Parameter], float]]:
    """(trainable parameters, lr) per layer group; a 3-element lr list maps onto fastai's groups in order,
    a scalar applies to every group. A bare module (the head alone) is one group with the last lr."""
    groups = getattr(model, "layer_groups", [model])
    lrs = list(lr) if isinstance(lr, (list, tuple)) else [lr] * len(groups)
    if len(lrs) != len(groups):
        if len(groups) == 1:
            lrs = lrs[-1:]
        else:
            raise ValueError(f"lr {lr} has {len(lrs)} values; the model has {len(groups)} layer groups")
    pairs = []
    for group, group_lr in zip(groups, lrs):
        params = [p for p in group.parameters() if p.requires_grad]
        if params:
            pairs.append((params, float(group_lr)))
    return pairs


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimiser each fit makes anew (the recipe's `train.optimizer` and `train.weight_decay`).

    `sgd` is fastai 0.7's: momentum 0.9, weight decay as L2 (0.7's default: none). `adamw` is fastai v2's default:
    Adam with betas (0.9, 0.99) and eps 1e-5, weight decay decoupled. On features far from ImageNet's (the demo's
    digits) it is what lets the unfrozen body recover from its BatchNorm's shift at the lesson's few epochs
    (docs/fastai-parity.md, "Why the demo trains with AdamW")."""

    name: str
    weight_decay: float

    def __str__(self) -> str:
        return f"{self.name}, weight decay {self.weight_decay:g}"

    @classmethod
    def from_params(cls, params: dict) -> "OptimizerSpec":
        """From a complete slice with train.optimizer and train.weight_decay."""
        return cls(params["optimizer"], float(params["weight_decay"]))

    def make(self, model: nn.Module, lr) -> torch.optim.Optimizer:
        groups = [{"params": params, "lr": group_lr} for params, group_lr in layer_group_lrs(model, lr)]
        if self.name == "sgd":
            return torch.optim.SGD(groups, lr=groups[-1]["lr"], momentum=0.9, weight_decay=self.weight_decay)
        if self.name == "adamw":
            return torch.optim.AdamW(groups, lr=groups[-1]["lr"], betas=(0.9, 0.99), eps=1e-5,
                                     weight_decay=self.weight_decay)
        raise ValueError(f"unknown optimizer {self.name!r}: sgd or adamw")


DEFAULT_OPTIMIZER = OptimizerSpec.from_params(DEFAULTS)


class EpochLog:
    """Prints `epoch train_loss valid_loss accuracy` per epoch and keeps every row in a CSV (rewritten atomically).

    Also keeps every training batch's loss (`batch_losses`: phase, fit, loss), for 0.7's `sched.plot_loss`."""

    COLUMNS = ["phase", "fit", "epoch", "train_loss", "valid_loss", "accuracy", "lr", "seconds"]

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.rows: list[dict] = []
        self.batch_losses: list[tuple[str, int, float]] = []

    def add(self, **row) -> None:
        self.rows.append(row)
        if len(self.rows) == 1:
            print(f"{'phase':<12}{'fit':>4}{'epoch':>6}{'trn_loss':>10}{'val_loss':>10}{'accuracy':>10}{'time':>8}")
        print(f"{row['phase']:<12}{row['fit']:>4}{row['epoch']:>6}{row['train_loss']:>10.4f}"
              f"{row['valid_loss']:>10.4f}{row['accuracy']:>10.4f}{row['seconds']:>7.1f}s", flush=True)
        if self.path and distributed.is_main():
            with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.COLUMNS)
                writer.writeheader()
                writer.writerows(self.rows)


def _to(device: torch.device, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return batch_on_device(x, device), y.to(device, non_blocking=True)


def n_outputs(model: nn.Module) -> int:
    """The number of classes: the out_features of the model's last Linear layer (fastai's head ends with one)."""
    return [module for module in distributed.unwrap(model).modules() if isinstance(module, nn.Linear)][-1].out_features


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               device: torch.device, amp: bool, mixer: BatchMixer | None = None,
               label_smoothing: float = OFF.label_smoothing) -> float:
    """One optimiser step on a batch (mixed first, with a `mixer`); returns its loss (NLL, on soft targets if any)."""
    x, y = _to(device, x, y)
    if mixer:
        x, y = mixer(x, y)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        loss = regularise.loss(model(x).float(), y, label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def evaluate(model: nn.Module, batches: Iterable, device: torch.device, amp: bool = False) -> tuple[float, float]:
    """(mean NLL, accuracy) over `batches` in eval mode; under torchrun, over every rank's share of them."""
    model = distributed.unwrap(model)
    distributed.sync_buffers(model)
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for x, y in batches:
            x, y = _to(device, x, y)
            log_probs = model(x).float()
            total_loss += F.nll_loss(log_probs, y, reduction="sum").item()
            correct += (log_probs.argmax(1) == y).sum().item()
            count += len(y)
    total_loss, correct, count = distributed.sum_over_ranks(total_loss, correct, count)
    return total_loss / count, correct / count


def seed_epoch(seed: int, phase: str, fit_index: int, epoch: int, batches) -> None:
    """Reseed every generator an epoch draws from, so that epoch is the same whether or not the run resumed."""
    epoch_seed = int(hashlib.sha256(f"{seed}/{phase}/{fit_index}/{epoch}".encode()).hexdigest()[:8], 16)
    epoch_seed = distributed.seed_sampler(batches, epoch_seed)
    random.seed(epoch_seed)
    np.random.seed(epoch_seed)
    torch.manual_seed(epoch_seed)
    generator = getattr(batches, "generator", None)
    if generator is not None:
        generator.manual_seed(epoch_seed)


class ResumePoint:
    """A stage's training state after every completed epoch, for resuming a killed job.

    Kept at `path`, which is not a declared output (Snakemake deletes a failed job's outputs, not this), and
    reused only by a rerun with the same `key` (a digest of the stage's parameters and inputs); deleted by
    `finish()` once the stage's outputs are written. Always saves the whole `model` of the stage, even while a
    fit trains only its head.
    """

    def __init__(self, path: str | Path, key: str, model: nn.Module, log: EpochLog):
        self.path, self.key, self.model, self.log = Path(path), key, model, log
        self.saved: dict | None = None
        self.fits_started = 0
        self.histories: list[list[list[float]]] = []  # lr history of every finished fit, in order
        if self.path.exists():
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if state.get("key") == key:
                self.saved = state
                self.histories = list(state["histories"])
                log.rows = list(state["log_rows"])
                log.batch_losses = [tuple(row) for row in state.get("batch_losses", [])]
                print(f"resuming after epoch {state['epoch']} of fit {state['fit']} from {self.path}", flush=True)
            else:  # a failed job's state no later run can use: nothing of it may linger beside the outputs
                self.path.unlink()
                print(f"removed {self.path}: it was saved by a run with other parameters or inputs", flush=True)

    def next_fit(self) -> int:
        self.fits_started += 1
        return self.fits_started - 1

    def save(self, loop: FitLoop, epoch: int) -> None:
        """The state after `epoch` of the loop's fit."""
        averaged, scheduler = loop.phase.averaged, loop.scheduler
        state = {"key": self.key, "fit": loop.ordinal, "epoch": epoch, "epochs": loop.spec.epochs,
                 "model": self.model.state_dict(), "averaged": averaged.state_dict() if averaged else None,
                 "optimizer": loop.optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else {},
                 "ema": loop.ema, "iteration": loop.iteration, "lr_history": loop.lr_history,
                 "histories": self.histories, "log_rows": self.log.rows, "batch_losses": self.log.batch_losses}
        if distributed.is_main():
            with atomic_path(self.path) as tmp:
                torch.save(state, tmp)
        self.saved = None  # from here on this run is ahead of anything on disk

    def restore(self, averaged: AveragedModel | None) -> None:
        """The saved weights into the model, and the saved weight average into `averaged`."""
        self.model.load_state_dict(self.saved["model"])
        if averaged is not None and self.saved.get("averaged") is not None:
            averaged.load_state_dict(self.saved["averaged"])

    def fit_done(self, lr_history: list) -> list:
        self.histories.append(lr_history)
        return lr_history

    def finish(self) -> None:
        if distributed.is_main():
            self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Phase:
    """One phase of a stage's training (the log's `phase`): the model and batches its fits train on, what they share.

    `model` may be wrapped in DistributedDataParallel (pipeline.compute.distributed): it trains through the wrapper.
    `averaged`, the EMA of the weights, is made by the stage so that it lasts across the stage's fits; it follows
    every step, and is what each epoch validates. The training steps run under bf16 autocast where `precision.train`
    says so, each epoch's validation (inference) where `precision.infer` does."""

    name: str
    model: nn.Module
    train_batches: Iterable
    valid_batches: Iterable
    device: torch.device
    log: EpochLog
    warmup: bool = DEFAULTS["warmup"]
    precision: Precision = FP32  # bf16 autocast or not, for the training steps and for validation apart
    seed: int = DEFAULTS["seed"]
    resume: ResumePoint | None = None
    optimizer_spec: OptimizerSpec = DEFAULT_OPTIMIZER
    regularisation: Regularisation = OFF
    averaged: AveragedModel | None = None


class FitLoop:
    """One fit's moving parts: its optimiser, SGDR schedule and warm-up, batch mixer, and how far it has got."""

    def __init__(self, phase: Phase, spec: FitSpec, fit_index: int):
        self.phase, self.spec, self.fit_index = phase, spec, fit_index
        regularisation = phase.regularisation
        self.mixer = BatchMixer(regularisation, n_outputs(phase.model)) if regularisation.mixes else None
        self.optimizer = phase.optimizer_spec.make(distributed.unwrap(phase.model), spec.lr)
        self.n_batches = len(phase.train_batches)
        self.scheduler, self.warmup_iters = self.sgdr()
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.lr_history: list[list[float]] = []
        self.ema, self.iteration, self.first_epoch = 0.0, 0, 0
        # The resume point counts the stage's fits across its phases; fit_index counts this phase's.
        self.ordinal = phase.resume.next_fit() if phase.resume else fit_index

    def sgdr(self) -> tuple[CosineAnnealingWarmRestarts | None, int]:
        """The scheduler, stepped per batch, and the warm-up's length in iterations; neither without cycle_len."""
        if not self.spec.cycle_len:
            return None, 0
        cycle_iters = self.spec.cycle_len * self.n_batches
        scheduler = CosineAnnealingWarmRestarts(self.optimizer, T_0=cycle_iters, T_mult=self.spec.cycle_mult)
        return scheduler, cycle_iters // 20 if self.phase.warmup else 0

    def resume(self) -> list[list[float]] | None:
        """Restore where a killed run left this fit; its lr history if it had finished there, else None (train on)."""
        resume = self.phase.resume
        saved = resume.saved if resume else None
        if saved is None or self.ordinal > saved["fit"]:
            return None
        resume.restore(self.phase.averaged)
        if self.ordinal < saved["fit"]:
            return self.already_done(resume.histories[self.ordinal])
        if saved["epoch"] == saved["epochs"] - 1:
            return self.already_done(resume.fit_done(saved["lr_history"]))
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler:
            self.scheduler.load_state_dict(saved["scheduler"])
        self.ema, self.iteration, self.lr_history = saved["ema"], saved["iteration"], list(saved["lr_history"])
        self.first_epoch = saved["epoch"] + 1
        return None

    def already_done(self, lr_history: list[list[float]]) -> list[list[float]]:
        """Says so, and hands the finished fit's lr history on."""
        print(f"{self.phase.name}: {self.spec} already done before the interruption", flush=True)
        return lr_history

    def announce(self) -> None:
        """The fit's line in the stage's log: its spec, length, optimiser and regularisers."""
        regularisation = self.phase.regularisation
        extras = "" if regularisation == OFF else f"; {regularisation}"
        print(f"{self.phase.name}: {self.spec} = {self.spec.epochs} epochs of {self.n_batches} batches "
              f"({self.phase.optimizer_spec}{extras})", flush=True)

    def train_epoch(self, epoch: int) -> None:
        """Reseed, then one optimiser step per batch: warm-up, the (mixed) batch's step, its records, the scheduler."""
        phase = self.phase
        seed_epoch(phase.seed, phase.name, self.fit_index, epoch, phase.train_batches)
        phase.model.train()
        for x, y in tqdm(phase.train_batches, desc=f"{phase.name} fit {self.fit_index} epoch {epoch}", leave=False,
                         disable=None if distributed.is_main() else True):
            self.warm_up()
            loss = train_step(model=phase.model, optimizer=self.optimizer, x=x, y=y, device=phase.device,
                              amp=phase.precision.train, mixer=self.mixer,
                              label_smoothing=phase.regularisation.label_smoothing)
            self.average_weights()
            self.record(loss)
            if self.scheduler:
                self.scheduler.step()

    def warm_up(self) -> None:
        """fastai 0.7's warm-up: the first 1/20 of the first cycle at a hundredth of the lr."""
        if self.iteration < self.warmup_iters:
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base / 100

    def average_weights(self) -> None:
        """The EMA of the weights, if the phase keeps one, follows every step."""
        if self.phase.averaged is not None:
            self.phase.averaged.update_parameters(distributed.unwrap(self.phase.model))

    def record(self, loss: float) -> None:
        """The step's loss (kept, and into the loss EMA) and the lr it ran at."""
        self.phase.log.batch_losses.append((self.phase.name, self.fit_index, loss))
        self.lr_history.append([group["lr"] for group in self.optimizer.param_groups])
        self.ema = EMA_BETA * self.ema + (1 - EMA_BETA) * loss
        self.iteration += 1

    def log_epoch(self, epoch: int, started: float) -> None:
        """Validate (the weight average, when there is one) and log the epoch's row."""
        phase = self.phase
        validated = phase.averaged.module if phase.averaged is not None else phase.model
        valid_loss, accuracy = evaluate(validated, phase.valid_batches, phase.device, phase.precision.infer)
        phase.log.add(phase=phase.name, fit=self.fit_index, epoch=epoch,
                      train_loss=self.ema / (1 - EMA_BETA ** self.iteration), valid_loss=valid_loss,
                      accuracy=accuracy, lr=self.lr_history[-1][-1], seconds=time.perf_counter() - started)

    def save(self, epoch: int) -> None:
        """The resume point after `epoch`, if the phase keeps one."""
        if self.phase.resume:
            self.phase.resume.save(self, epoch)

    def finish(self) -> list[list[float]]:
        """The fit's lr history, kept by the resume point for a later rerun's `resume`."""
        return self.phase.resume.fit_done(self.lr_history) if self.phase.resume else self.lr_history


def fit(phase: Phase, spec: FitSpec, fit_index: int, on_cycle_end: Callable[[int], None] | None = None
        ) -> list[list[float]]:
    """Run one fit; returns the learning rate of every layer group at every iteration (for `plot_lr`).

    `on_cycle_end(cycle)` is called with the 1-based number of each SGDR cycle once its last epoch is validated."""
    loop = FitLoop(phase, spec, fit_index)
    finished = loop.resume()
    if finished is not None:
        return finished
    loop.announce()
    for epoch in range(loop.first_epoch, spec.epochs):
        started = time.perf_counter()
        loop.train_epoch(epoch)
        loop.log_epoch(epoch, started)
        if on_cycle_end and epoch in spec.cycle_ends:
            # Before the resume point moves past this epoch: a job killed in between repeats the epoch, and so
            # the callback, on its rerun; the other order would resume after it and never call it again.
            on_cycle_end(spec.cycle_ends.index(epoch) + 1)
        loop.save(epoch)
    return loop.finish()


def run_fits(phase: Phase, fits: list[dict], schedules: list | None = None,
             on_cycle_end: Callable[[int], None] | None = None) -> list[tuple[str, list[list[float]]]]:
    """A phase's sequence of fits (the recipe's list); appends (title, lr history) per fit to `schedules`.
    `on_cycle_end` is called at the end of each SGDR cycle of the last fit only (see `fit`)."""
    schedules = [] if schedules is None else schedules
    for index, fit_config in enumerate(fits):
        spec = FitSpec.from_config(fit_config)
        is_last = index == len(fits) - 1
        history = fit(phase, spec, index, on_cycle_end if is_last else None)
        schedules.append((f"{phase.name}: {spec}", history))
    return schedules


def lr_find(model: nn.Module, train_batches, device: torch.device, start_lr: float = 1e-5, end_lr: float = 10.0,
            amp: bool = False, lr=None, optimizer_spec: OptimizerSpec = DEFAULT_OPTIMIZER) -> dict:
    """fastai 0.7 `lr_find`: lr grows exponentially from start_lr to end_lr over at most one epoch, stopping once
    the EMA-smoothed loss exceeds 4x the best; the model's weights and buffers are restored afterwards.

    With a differential `lr` (one value per layer group, as the fits give it), every group's lr moves together,
    keeping the ratios of `lr`: the last group's sweeps start_lr -> end_lr, and it is the one recorded (0.7's
    `lr_find(lrs / 1000)` on an unfrozen model did the same)."""
    saved_state = copy.deepcopy(model.state_dict())
    n_steps = max(len(train_batches), 2)
    lrs_per_group = list(lr) if isinstance(lr, (list, tuple)) else None
    optimizer = optimizer_spec.make(model, [start_lr * value / lrs_per_group[-1] for value in lrs_per_group]
                                    if lrs_per_group else start_lr)
    start_lrs = [group["lr"] for group in optimizer.param_groups]
    factor = (end_lr / start_lr) ** (1 / (n_steps - 1))
    lrs, losses, smoothed = [], [], []
    ema, best = 0.0, math.inf
    model.train()
    for step, (x, y) in enumerate(train_batches):
        for group, group_start in zip(optimizer.param_groups, start_lrs):
            group["lr"] = group_start * factor ** step
        loss = train_step(model=model, optimizer=optimizer, x=x, y=y, device=device, amp=amp)
        ema = EMA_BETA * ema + (1 - EMA_BETA) * loss
        smooth = ema / (1 - EMA_BETA ** (step + 1))
        lrs.append(optimizer.param_groups[-1]["lr"]), losses.append(loss), smoothed.append(smooth)
        if not math.isfinite(smooth) or smooth > 4 * best:
            break
        best = min(best, smooth)
    model.load_state_dict(saved_state)
    group_ratios = [group_start / start_lrs[-1] for group_start in start_lrs]
    return {"lr": lrs, "loss": losses, "smoothed_loss": smoothed, "suggested_lr": suggest_lr(lrs, smoothed),
            "group_ratios": group_ratios}


def suggest_lr(lrs: list[float], smoothed: list[float]) -> float:
    """Where the smoothed loss falls fastest against log(lr) (0.7 left the choice to the eye; this marks one)."""
    finite = [i for i, value in enumerate(smoothed) if math.isfinite(value)]
    finite = finite[len(finite) // 10:]  # the EMA has barely started over the first steps
    if len(finite) < 3:
        return lrs[0]
    slopes = [(smoothed[b] - smoothed[a]) / (math.log(lrs[b]) - math.log(lrs[a])) for a, b in zip(finite, finite[1:])]
    return lrs[finite[min(range(len(slopes)), key=slopes.__getitem__)]]
