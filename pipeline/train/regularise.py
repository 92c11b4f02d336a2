"""The regularisers beyond fastai 0.7 that a training stage's fits can use (the recipe's `regularise`, in the head's
augmented fits and in each fine-tune size; all off by default, so the lesson's recipes train as 0.7 did).

Here: what they do to a batch and its loss (MixUp / CutMix, label smoothing) and an exponential moving average of
the weights. The image policies (TrivialAugment / RandAugment, random erasing) are training transforms
(`pipeline.data.transforms`), stochastic depth is set on the model (`pipeline.models.classifier.set_drop_path`). Everything random
here draws from torch's global generator, which the training loop reseeds every epoch (`fit.seed_epoch`), so runs
repeat and a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import v2

from pipeline.recipe import defaults as recipe_defaults


@dataclass(frozen=True)
class Regularisation:
    """One `regularise` section of the recipe (its keys and defaults: config/schema.yaml, `$defs.regularise`)."""

    mixup_alpha: float
    cutmix_alpha: float
    mix_prob: float
    switch_prob: float
    label_smoothing: float
    auto_augment: str
    random_erasing: float
    ema_decay: float
    ema_warmup: bool
    drop_path: float

    @classmethod
    def from_section(cls, section: dict) -> "Regularisation":
        """From a filled `regularise` section (every key present: the schema fills them)."""
        return cls(**{field.name: section[field.name] for field in fields(cls)})

    @property
    def mixes(self) -> bool:
        return bool(self.mixup_alpha or self.cutmix_alpha) and self.mix_prob > 0

    def __str__(self) -> str:
        on = [f"{field.name}={getattr(self, field.name)}" for field in fields(self)
              if getattr(self, field.name) != getattr(OFF, field.name)]
        return ", ".join(on) or "none"


# The schema's defaults (every regulariser off), for fits called without a recipe: tests, benchmarks, lr_find.
OFF = Regularisation.from_section(recipe_defaults.defaults(("head.regularise",))["regularise"])


class BatchMixer:
    """MixUp and/or CutMix (torchvision v2's) on a batch with probability `mix_prob`; with both, CutMix with
    probability `switch_prob` (timm's Mixup). Labels become soft targets (N, C) on every batch, mixed or not."""

    def __init__(self, regularisation: Regularisation, n_classes: int):
        self.n_classes, self.mix_prob = n_classes, regularisation.mix_prob
        choices, weights = [], []
        if regularisation.cutmix_alpha:
            choices.append(v2.CutMix(alpha=regularisation.cutmix_alpha, num_classes=n_classes))
            weights.append(regularisation.switch_prob if regularisation.mixup_alpha else 1.0)
        if regularisation.mixup_alpha:
            choices.append(v2.MixUp(alpha=regularisation.mixup_alpha, num_classes=n_classes))
            weights.append(1 - regularisation.switch_prob if regularisation.cutmix_alpha else 1.0)
        self.mix = v2.RandomChoice(choices, p=weights)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if y.ndim != 1:
            # Checked before the draw, so it fails on the first batch rather than on the first mixed one.
            raise ValueError("MixUp / CutMix take integer labels, and this split's training targets are soft "
                             "(pseudo.mode soft): set the student's mixup_alpha and cutmix_alpha to 0, or use "
                             "pseudo.mode threshold")
        if float(torch.rand(())) < self.mix_prob:
            return self.mix(x, y)
        return x, F.one_hot(y, self.n_classes).to(x.dtype)


def loss(log_probs: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """NLL on the model's log-probabilities: hard labels (N,) or soft targets (N, C), optionally smoothed.
    `cross_entropy` of log-probabilities is their NLL (log_softmax leaves them as they are), and it takes soft targets
    and label smoothing itself; without either, plain `nll_loss`, exactly fastai 0.7's loss."""
    if targets.ndim == 1 and not label_smoothing:
        return F.nll_loss(log_probs, targets)
    return F.cross_entropy(log_probs, targets, label_smoothing=label_smoothing)


def averaged_model(model: nn.Module, regularisation: Regularisation) -> AveragedModel | None:
    """An EMA of the model's weights and buffers (torch's AveragedModel), or None when `ema_decay` is 0.

    Buffers are averaged too (`use_buffers`), as timm's ModelEmaV3 does by default: the EMA model's BatchNorm
    statistics are the moving average of the trained model's, never recomputed. With `ema_warmup` the decay is
    timm's warm-up, min(decay, (1 + n) / (10 + n)) after n updates, so early weights do not dominate a short run."""
    if not regularisation.ema_decay:
        return None
    decay = regularisation.ema_decay
    if not regularisation.ema_warmup:
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    def warmed_up(averaged, current, n_averaged):
        n = int(n_averaged)
        get_ema_multi_avg_fn(min(decay, (1 + n) / (10 + n)))(averaged, current, n_averaged)

    return AveragedModel(model, multi_avg_fn=warmed_up, use_buffers=True)
