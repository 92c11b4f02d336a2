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
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm  # not tqdm.auto: its bar calls iter() on a DataLoader at creation, starting a
# second set of loader workers each epoch and drawing from the loader's generator

from pipeline import distributed, recipe_defaults, regularise
from pipeline.io import atomic_path
from pipeline.regularise import OFF, BatchMixer, Regularisation
from pipeline.runtime import batch_on_device

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


class TensorBatches:
    """Mini-batches of in-memory tensors (the precomputed activations): one indexing op per batch, no Dataset."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
                 generator: torch.Generator | None = None):
        self.x, self.y, self.batch_size, self.shuffle, self.generator = x, y, batch_size, shuffle, generator

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=self.generator) if self.shuffle else torch.arange(len(self.x))
        for start in range(0, len(order), self.batch_size):
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
    (README, "Why AdamW")."""

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
            else:
                print(f"ignoring {self.path}: it was saved by a run with other parameters or inputs", flush=True)

    def next_fit(self) -> int:
        self.fits_started += 1
        return self.fits_started - 1

    def save(self, fit: int, epoch: int, epochs: int, optimizer, scheduler, ema: float, iteration: int,
             lr_history: list, averaged: AveragedModel | None = None) -> None:
        state = {"key": self.key, "fit": fit, "epoch": epoch, "epochs": epochs, "model": self.model.state_dict(),
                 "averaged": averaged.state_dict() if averaged else None,
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else {},
                 "ema": ema, "iteration": iteration, "lr_history": lr_history, "histories": self.histories,
                 "log_rows": self.log.rows, "batch_losses": self.log.batch_losses}
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


def fit(model: nn.Module, train_batches, valid_batches, spec: FitSpec, device: torch.device, log: EpochLog,
        phase: str, fit_index: int, warmup: bool = DEFAULTS["warmup"], amp: bool = False,
        seed: int = DEFAULTS["seed"],
        resume: ResumePoint | None = None,
        on_cycle_end: Callable[[int], None] | None = None,
        optimizer_spec: OptimizerSpec = DEFAULT_OPTIMIZER, regularisation: Regularisation = OFF,
        averaged: AveragedModel | None = None) -> list[list[float]]:
    """Run one fit; returns the learning rate of every layer group at every iteration (for `plot_lr`).

    `on_cycle_end(cycle)` is called with the 1-based number of each SGDR cycle once its last epoch is validated.
    `model` may be wrapped in DistributedDataParallel (pipeline.distributed): it trains through the wrapper.
    `regularisation` mixes the batches and smooths the targets; `averaged` (its EMA of the weights, made by the
    stage so that it lasts across the stage's fits) follows every step, and is what each epoch validates.
    """
    mixer = BatchMixer(regularisation, n_outputs(model)) if regularisation.mixes else None
    optimizer = optimizer_spec.make(distributed.unwrap(model), spec.lr)
    n_batches = len(train_batches)
    scheduler = None
    warmup_iters = 0
    if spec.cycle_len:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=spec.cycle_len * n_batches, T_mult=spec.cycle_mult)
        warmup_iters = spec.cycle_len * n_batches // 20 if warmup else 0
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    lr_history: list[list[float]] = []
    ema, iteration, first_epoch = 0.0, 0, 0
    ordinal = resume.next_fit() if resume else fit_index
    saved = resume.saved if resume else None
    if saved is not None and ordinal <= saved["fit"]:
        resume.restore(averaged)
        if ordinal < saved["fit"] or saved["epoch"] == saved["epochs"] - 1:
            print(f"{phase}: {spec} already done before the interruption", flush=True)
            return resume.histories[ordinal] if ordinal < saved["fit"] else resume.fit_done(saved["lr_history"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler:
            scheduler.load_state_dict(saved["scheduler"])
        ema, iteration, lr_history = saved["ema"], saved["iteration"], list(saved["lr_history"])
        first_epoch = saved["epoch"] + 1
    extras = "" if regularisation == OFF else f"; {regularisation}"
    print(f"{phase}: {spec} = {spec.epochs} epochs of {n_batches} batches ({optimizer_spec}{extras})", flush=True)
    for epoch in range(first_epoch, spec.epochs):
        started = time.perf_counter()
        seed_epoch(seed, phase, fit_index, epoch, train_batches)
        model.train()
        for x, y in tqdm(train_batches, desc=f"{phase} fit {fit_index} epoch {epoch}", leave=False,
                         disable=None if distributed.is_main() else True):
            if iteration < warmup_iters:
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base / 100
            loss = train_step(model, optimizer, x, y, device, amp, mixer, regularisation.label_smoothing)
            if averaged is not None:
                averaged.update_parameters(distributed.unwrap(model))
            log.batch_losses.append((phase, fit_index, loss))
            lr_history.append([group["lr"] for group in optimizer.param_groups])
            if scheduler:
                scheduler.step()
            ema = EMA_BETA * ema + (1 - EMA_BETA) * loss
            iteration += 1
        valid_loss, accuracy = evaluate(averaged.module if averaged is not None else model, valid_batches, device, amp)
        log.add(phase=phase, fit=fit_index, epoch=epoch, train_loss=ema / (1 - EMA_BETA ** iteration),
                valid_loss=valid_loss, accuracy=accuracy, lr=lr_history[-1][-1],
                seconds=time.perf_counter() - started)
        if on_cycle_end and epoch in spec.cycle_ends:
            # Before the resume point moves past this epoch: a job killed in between repeats the epoch, and so
            # the callback, on its rerun; the other order would resume after it and never call it again.
            on_cycle_end(spec.cycle_ends.index(epoch) + 1)
        if resume:
            resume.save(ordinal, epoch, spec.epochs, optimizer, scheduler, ema, iteration, lr_history, averaged)
    return resume.fit_done(lr_history) if resume else lr_history


def run_fits(model: nn.Module, train_batches, valid_batches, fits: list[dict], phase: str, device: torch.device,
             log: EpochLog, warmup: bool = DEFAULTS["warmup"], amp: bool = False, seed: int = DEFAULTS["seed"],
             resume: ResumePoint | None = None, schedules: list | None = None,
             on_cycle_end: Callable[[int], None] | None = None,
             optimizer_spec: OptimizerSpec = DEFAULT_OPTIMIZER, regularisation: Regularisation = OFF,
             averaged: AveragedModel | None = None) -> list[tuple[str, list[list[float]]]]:
    """A phase's sequence of fits (the recipe's list); appends (title, lr history) per fit to `schedules`.
    `on_cycle_end` is called at the end of each SGDR cycle of the last fit only (see `fit`)."""
    schedules = [] if schedules is None else schedules
    for index, fit_config in enumerate(fits):
        spec = FitSpec.from_config(fit_config)
        is_last = index == len(fits) - 1
        history = fit(model, train_batches, valid_batches, spec, device, log, phase, index, warmup, amp, seed, resume,
                      on_cycle_end if is_last else None, optimizer_spec, regularisation, averaged)
        schedules.append((f"{phase}: {spec}", history))
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
        loss = train_step(model, optimizer, x, y, device, amp)
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
