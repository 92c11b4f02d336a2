"""The fastai 0.7 ConvLearner: a torchvision backbone cut before its pool, AdaptiveConcatPool, the fastai head,
three layer groups for differential learning rates, and freeze/unfreeze with frozen BatchNorm kept in eval mode.
Checkpoints carry their metadata (classes, arch, size) as plain data and load with `weights_only=True`.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn
from torchvision import models

from pipeline.io import atomic_path, params_digest


class WeightsError(RuntimeError):
    """Backbone weights that cannot be had, or a checkpoint that does not fit the recipe."""


class AdaptiveConcatPool2d(nn.Module):
    """Adaptive max and average pooling side by side: twice the channels of a plain average pool."""

    def __init__(self):
        super().__init__()
        self.max_pool, self.avg_pool = nn.AdaptiveMaxPool2d(1), nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.max_pool(x), self.avg_pool(x)], dim=1)


def _imagenet_weights(arch: str, name: str):
    weights_enum = models.get_model_weights(arch)
    return weights_enum.DEFAULT if name == "imagenet" else weights_enum[name]


def load_backbone(arch: str, weights: str = "none") -> nn.Module:
    """A torchvision classifier by name with `weights`: 'none' (from scratch), 'imagenet' (torchvision's
    DEFAULT enum member, or a member name such as 'IMAGENET1K_V1'), or a path to a local state dict."""
    if weights == "none":
        print(f"backbone {arch}: no pretrained weights, training from scratch", flush=True)
        return models.get_model(arch, weights=None)
    if weights == "imagenet" or weights.isupper():
        chosen = _imagenet_weights(arch, weights)
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(chosen.url)
        try:
            model = models.get_model(arch, weights=chosen)
        except (URLError, OSError) as error:
            raise WeightsError(f"cannot load {arch} {chosen} weights: {cached} is not there and downloading "
                               f"{chosen.url} failed ({error}). Put the file at {cached} (or set TORCH_HOME), "
                               f"or set model.weights to a local file or 'none'.") from error
        print(f"backbone {arch}: torchvision weights {chosen} from {cached}", flush=True)
        return model
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found (model.weights is 'none', 'imagenet' or a path)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    model = models.get_model(arch, weights=None)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsError(f"weights file {path} does not fit {arch}: {error}") from error
    print(f"backbone {arch}: weights from {path}", flush=True)
    return model


def cut_body(backbone: nn.Module) -> tuple[nn.Sequential, int]:
    """The convolutional body (everything before the final pool) and where its two layer groups split.

    ResNet-style models: conv1 ... layer4, split before layer3 (fastai's lr_cut 6 for resnet34);
    models with a `.features` block (VGG, DenseNet, EfficientNet, ...): that block, split in half.
    """
    if hasattr(backbone, "layer4"):
        return nn.Sequential(*list(backbone.children())[:-2]), 6
    if hasattr(backbone, "features"):
        body = nn.Sequential(*backbone.features.children())
        return body, len(body) // 2
    raise WeightsError(f"don't know where to cut {type(backbone).__name__}: expected layer4 or .features")


def make_head(n_features: int, n_classes: int, ps=(0.25, 0.5), xtra_fc=(512,)) -> nn.Sequential:
    """fastai's head: [BN, Dropout, Linear, ReLU] per extra layer, then BN, Dropout, Linear(C), LogSoftmax."""
    sizes = [n_features, *xtra_fc, n_classes]
    ps = [ps] * (len(sizes) - 1) if isinstance(ps, (int, float)) else list(ps)
    if len(ps) != len(sizes) - 1:
        raise ValueError(f"ps needs {len(sizes) - 1} dropout values for xtra_fc={list(xtra_fc)}, got {ps}")
    layers: list[nn.Module] = []
    for index, (n_in, n_out, p) in enumerate(zip(sizes[:-1], sizes[1:], ps)):
        layers += [nn.BatchNorm1d(n_in), nn.Dropout(p), nn.Linear(n_in, n_out)]
        layers.append(nn.ReLU(inplace=True) if index < len(sizes) - 2 else nn.LogSoftmax(dim=1))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """body -> AdaptiveConcatPool + flatten -> head, with fastai's three layer groups."""

    def __init__(self, body: nn.Sequential, lr_cut: int, n_classes: int, ps=(0.25, 0.5), xtra_fc=(512,)):
        super().__init__()
        self.body = body
        self.lr_cut = lr_cut
        self.pool = nn.Sequential(AdaptiveConcatPool2d(), nn.Flatten())
        self.n_features = feature_count(body)
        self.head = make_head(self.n_features, n_classes, ps, xtra_fc)
        self.n_trainable_groups = len(self.layer_groups)

    @property
    def layer_groups(self) -> list[nn.Module]:
        return [self.body[: self.lr_cut], self.body[self.lr_cut:], nn.Sequential(self.pool, self.head)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled activations fastai precomputed: the head's input."""
        return self.pool(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def freeze_to(self, n: int) -> None:
        """Train only layer groups n, n+1, ... (fastai `freeze_to`); freeze() is freeze_to(-1), unfreeze() is 0."""
        groups = self.layer_groups
        first_trainable = n % len(groups)
        for index, group in enumerate(groups):
            for parameter in group.parameters():
                parameter.requires_grad_(index >= first_trainable)
        self.n_trainable_groups = len(groups) - first_trainable
        self.train(self.training)

    def freeze(self) -> None:
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        self.freeze_to(0)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            # BatchNorm in frozen groups keeps its running statistics (eval mode), as fastai 0.7 did.
            for group in self.layer_groups[: len(self.layer_groups) - self.n_trainable_groups]:
                for module in group.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self


def feature_count(body: nn.Module) -> int:
    was_training = body.training
    body.eval()
    with torch.no_grad():
        channels = body(torch.zeros(1, 3, 64, 64)).shape[1]
    body.train(was_training)
    return 2 * channels


def build_classifier(arch: str, weights: str, n_classes: int, ps=(0.25, 0.5), xtra_fc=(512,)) -> Classifier:
    body, lr_cut = cut_body(load_backbone(arch, weights))
    return Classifier(body, lr_cut, n_classes, ps, xtra_fc)


def build_seeded_classifier(params: dict, n_classes: int) -> Classifier:
    """The same backbone in every stage: seeded, so a from-scratch body is identical wherever it is rebuilt."""
    torch.manual_seed(params.get("seed", 42))
    return build_classifier(params["arch"], params.get("weights", "none"), n_classes,
                            params.get("ps", [0.25, 0.5]), params.get("xtra_fc", [512]))


def checkpoint_meta(params: dict, classes: list[str], stage: str, model: Classifier) -> dict:
    """Plain data only (loads with weights_only=True); params_hash ties the weights to the recipe that made them.
    `images` says how the images reached the model (resize rule, augmentations), for `pipeline.predict`."""
    images = {**params.get("images", {}), "augmentation": params.get("augmentation", "side_on"),
              "max_zoom": params.get("max_zoom", 1.1)}
    return {"classes": classes, "arch": params["arch"], "size": params["size"], "stage": stage,
            "ps": params.get("ps", [0.25, 0.5]), "xtra_fc": params.get("xtra_fc", [512]),
            "n_features": model.n_features, "images": images,
            "params_hash": params_digest(params)}


def save_checkpoint(model: nn.Module, path: str | Path, meta: dict) -> None:
    """Weights plus plain metadata (classes, arch, size, ...): everything `torch.load(weights_only=True)` accepts."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)


def load_checkpoint(path: str | Path, expect: dict) -> tuple[dict, dict]:
    """(state_dict, meta) of a checkpoint whose metadata agrees with `expect` (e.g. classes, arch)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    meta = checkpoint.get("meta", {})
    for key, wanted in expect.items():
        if meta.get(key) != wanted:
            raise WeightsError(f"checkpoint {path} has {key}={meta.get(key)!r}, but the recipe needs {wanted!r}")
    return checkpoint["state_dict"], meta


def restore_model(checkpoint: str | Path, arch: str, classes: list[str]) -> tuple[Classifier, dict]:
    """Rebuild the architecture (no weight download: the checkpoint has the weights) and load the checkpoint."""
    state, meta = load_checkpoint(checkpoint, {"classes": classes, "arch": arch})
    body, lr_cut = cut_body(models.get_model(arch, weights=None))
    model = Classifier(body, lr_cut, len(classes), meta["ps"], meta["xtra_fc"])
    model.load_state_dict(state)
    return model, meta
