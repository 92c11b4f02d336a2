"""fastai 0.7's train / validation / TTA transforms, built from torchvision transforms v2.

Train (`tfms_from_model(..., aug_tfms=transforms_side_on, max_zoom=1.1)`): random scale, then the augmentations
(side_on: rotate, lighting, flip; top_down: rotate, lighting, dihedral; basic: rotate, lighting), then a random
sz x sz crop; validation: shorter side to sz, centre crop. TTA reuses the train transforms.
Deliberate difference: lighting runs after the crop (on the sz x sz tensor, cheaper) instead of before it;
its mean is then the crop's mean rather than the whole image's.
Normalisation and the resize interpolation follow the backbone's preprocessing (`pipeline.models.backbones`): ImageNet
statistics and bilinear for torchvision's models, the pretrained config's for timm's (mean = std = 0.5, bicubic
for EfficientNet-Lite0); 0.7 always used ImageNet statistics.
Beyond fastai 0.7, two opt-in training regularisers from timm (its --aa and --reprob): an auto-augment policy on the
uint8 crop and random erasing last; both are training only and never part of TTA, which keeps the defaults.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pipeline.offline import images as offline

AUGMENTATIONS = ("side_on", "top_down", "basic", "none")
AUTO_AUGMENTS = ("none", "trivial_augment", "rand_augment")
_AUTO_AUGMENT_POLICIES = {"trivial_augment": v2.TrivialAugmentWide, "rand_augment": v2.RandAugment}
# What a torchvision model's weights were trained with, for callers that name no backbone.
DEFAULT_PREPROCESSING = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"}


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


class RandomZoom:
    """With probability p the shorter side becomes U(1, max_zoom)*sz, else sz (0.7's RandomScale)."""

    def __init__(self, size: int, max_zoom: float, p: float = 0.75,
                 interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR):
        self.size, self.max_zoom, self.p, self.interpolation = size, max_zoom, p, interpolation

    def __call__(self, image):
        zoom = _uniform(1.0, self.max_zoom) if self.max_zoom > 1 and torch.rand(()) < self.p else 1.0
        return F.resize(image, int(self.size * zoom), interpolation=self.interpolation, antialias=True)


class RandomRotateReflect:
    """Rotate by U(-deg, deg) with probability p, filling the corners by reflection (0.7 used cv2's BORDER_REFLECT)."""

    def __init__(self, degrees: float = 10.0, p: float = 0.75):
        self.degrees, self.p = degrees, p

    def __call__(self, image):
        if torch.rand(()) >= self.p:
            return image
        angle = _uniform(-self.degrees, self.degrees)
        height, width = image.shape[-2:]
        pad = min(math.ceil(max(height, width) * math.sin(math.radians(abs(angle)))) + 1, min(height, width) - 1)
        padded = F.pad(image, [pad, pad, pad, pad], padding_mode="reflect")
        rotated = F.rotate(padded, angle, interpolation=v2.InterpolationMode.BILINEAR)
        return F.center_crop(rotated, [height, width])


class RandomDihedral:
    """One of the 8 symmetries of the square: rot90 k times, then a flip with probability 0.5 (for top-down images)."""

    def __call__(self, image):
        image = torch.rot90(image, int(torch.randint(4, ())), dims=(-2, -1))
        return F.horizontal_flip(image) if torch.rand(()) < 0.5 else image


class RandomLighting:
    """fastai 0.7 lighting: brightness b ~ U(-b, b) added; contrast from r ~ U(-c, c) scales around the mean."""

    def __init__(self, brightness: float = 0.05, contrast: float = 0.05):
        self.brightness, self.contrast = brightness, contrast

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        b = _uniform(-self.brightness, self.brightness)
        r = _uniform(-self.contrast, self.contrast)
        c = -1 / (r - 1) if r < 0 else r + 1
        mean = image.mean()
        return ((image - mean) * c + mean + b).clamp(0, 1)


def interpolation_mode(preprocessing: dict) -> v2.InterpolationMode:
    return v2.InterpolationMode(preprocessing.get("interpolation", "bilinear"))


def _policy_interpolation(preprocessing: dict) -> v2.InterpolationMode:
    # The policies' shear/translate/rotate run on the uint8 tensor, where torchvision's affine and rotate accept
    # only nearest and bilinear; a bicubic backbone (EfficientNet-Lite0) would raise, so it gets the closest one.
    mode = interpolation_mode(preprocessing)
    supported = (v2.InterpolationMode.NEAREST, v2.InterpolationMode.BILINEAR)
    return mode if mode in supported else v2.InterpolationMode.BILINEAR


def train_transform(size: int, max_zoom: float = 1.1, augmentation: str = "side_on", normalise: bool = True,
                    preprocessing: dict | None = None, auto_augment: str = "none", random_erasing: float = 0.0):
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}")
    if auto_augment not in AUTO_AUGMENTS:
        raise ValueError(f"auto_augment must be one of {AUTO_AUGMENTS}, got {auto_augment!r}")
    if not 0.0 <= random_erasing <= 1.0:
        raise ValueError(f"random_erasing must be a probability in [0, 1], got {random_erasing!r}")
    preprocessing = preprocessing or DEFAULT_PREPROCESSING
    steps = [v2.ToImage(), RandomZoom(size, max_zoom, interpolation=interpolation_mode(preprocessing))]
    if augmentation == "side_on":
        steps += [RandomRotateReflect(10, p=0.75), v2.RandomHorizontalFlip(0.5)]
    elif augmentation == "top_down":
        steps += [RandomRotateReflect(10, p=0.75), RandomDihedral()]
    elif augmentation == "basic":  # 0.7's transforms_basic: no flip, for images whose mirror means something else
        steps.append(RandomRotateReflect(10, p=0.75))
    steps.append(v2.RandomCrop(size))
    if auto_augment != "none":  # where timm puts it: after crop and flip, on uint8, which the policies' ops expect
        steps.append(_AUTO_AUGMENT_POLICIES[auto_augment](interpolation=_policy_interpolation(preprocessing)))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if augmentation != "none":
        steps.append(RandomLighting(0.05, 0.05))
    if normalise:
        steps.append(v2.Normalize(preprocessing["mean"], preprocessing["std"]))
    if random_erasing > 0:  # last, as timm's --reprob: N(0, 1) noise matches the statistics of a normalised image
        steps.append(v2.RandomErasing(p=random_erasing, value="random"))
    return v2.Compose(steps)


def valid_transform(size: int, normalise: bool = True, preprocessing: dict | None = None):
    preprocessing = preprocessing or DEFAULT_PREPROCESSING
    steps = [v2.ToImage(), v2.Resize(size, interpolation=interpolation_mode(preprocessing), antialias=True),
             v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True)]
    if normalise:
        steps.append(v2.Normalize(preprocessing["mean"], preprocessing["std"]))
    return v2.Compose(steps)


class FixedView:
    """One deterministic TTA view (`pipeline.offline.view`) as a (3, size, size) uint8 tensor: the very pixels the
    bundle's predict.py computes, for a model that normalises inside (`pipeline.models.classifier.ImageClassifier`)."""

    def __init__(self, size: int, preprocessing: dict | None, spec: dict):
        self.size, self.spec = size, spec
        self.interpolation = (preprocessing or DEFAULT_PREPROCESSING).get("interpolation", "bilinear")

    def __call__(self, image) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(offline.view(image, self.size, self.interpolation, self.spec)))
