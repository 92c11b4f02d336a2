"""The fastai 0.7 ConvLearner on a torchvision or timm backbone: the body cut before its pool, AdaptiveConcatPool,
the fastai head, three layer groups for differential learning rates, and freeze/unfreeze with frozen BatchNorm kept
in eval mode. Checkpoints carry their metadata (classes, arch, preprocessing, groups) as plain data and load with
`weights_only=True`.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from pipeline.models import backbones
from pipeline.models.backbones import Backbone, WeightsError
from pipeline.io import atomic_path, file_digest


class AdaptiveConcatPool2d(nn.Module):
    """Adaptive max and average pooling side by side: twice the channels of a plain average pool."""

    def __init__(self):
        super().__init__()
        self.max_pool, self.avg_pool = nn.AdaptiveMaxPool2d(1), nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.max_pool(x), self.avg_pool(x)], dim=1)


class TimmBody(nn.Module):
    """A timm model without pool and classifier (`reset_classifier(0, '')`): its `forward_features` map, in NCHW."""

    def __init__(self, model: nn.Module):
        super().__init__()
        model.reset_classifier(0, "")
        self.model = model
        self.channels_last_output = getattr(model, "output_fmt", "NCHW") == "NHWC"  # Swin and friends

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(x)
        return features.permute(0, 3, 1, 2) if self.channels_last_output else features


def cut_body(backbone: Backbone, model: nn.Module) -> tuple[nn.Module, list[list[str]]]:
    """The body (everything before the final pool) and its two layer groups, as names of its submodules.

    torchvision ResNets: conv1 ... layer4, split before layer3 (fastai 0.7's lr_cut 6 for resnet34); other
    torchvision models with a `.features` block (VGG, DenseNet, EfficientNet, ...): that block, split in half.
    timm models: `forward_features`, grouped by timm's own stage structure (`group_matcher(coarse=True)`), the
    stages split in half (the later half, with the final conv, is the second group).
    """
    if backbone.source == "timm":
        body = TimmBody(model)
        feature_channels(backbone.arch, body)  # a token sequence (ViT) is refused before its groups are looked for
        groups = _timm_stage_groups(body)
    elif hasattr(model, "layer4"):
        body = nn.Sequential(*list(model.children())[:-2])
        groups = [[str(i) for i in range(6)], [str(i) for i in range(6, len(body))]]
    elif hasattr(model, "features"):
        body = nn.Sequential(*model.features.children())
        half = len(body) // 2
        groups = [[str(i) for i in range(half)], [str(i) for i in range(half, len(body))]]
    else:
        raise WeightsError(f"don't know where to cut {backbone.arch} ({type(model).__name__}): expected a ResNet's "
                           "layer4 or a .features block; timm's version of the model may work (timm/<name>)")
    return body, groups


def _timm_stage_groups(body: TimmBody) -> list[list[str]]:
    from timm.models import group_modules

    stages = group_modules(body.model, body.model.group_matcher(coarse=True))
    ordered = [[f"model.{name}" for name in stages[key]] for key in sorted(stages)]
    if len(ordered) < 2:
        raise WeightsError(f"timm's group_matcher gives {type(body.model).__name__} {len(ordered)} stage group; "
                           "differential learning rates need at least 2")
    half = (len(ordered) + 1) // 2
    groups = [sum(ordered[:half], []), sum(ordered[half:], [])]
    grouped = {id(p) for names in groups for name in names for p in body.get_submodule(name).parameters()}
    if ungrouped := [name for name, p in body.named_parameters() if id(p) not in grouped]:
        raise WeightsError(f"timm's stage groups of {type(body.model).__name__} leave out {', '.join(ungrouped[:5])}")
    return groups


def feature_channels(arch: str, body: nn.Module) -> int:
    """The channels of the body's feature map, checked to be one: (N, C, H, W) with C fixed and H, W growing with the
    input (a token sequence or a channels-last map would be pooled over the wrong axes, silently)."""
    was_training = body.training
    body.eval()
    try:
        with torch.no_grad():
            shapes = [tuple(body(torch.zeros(1, 3, side, side)).shape) for side in (64, 96)]
    except Exception as error:  # e.g. a transformer with a fixed input size
        raise WeightsError(f"{arch}: its body does not run on 64 and 96 px images ({type(error).__name__}: "
                           f"{str(error)[:200]}); only convolutional bodies of any input size are supported") from None
    finally:
        body.train(was_training)
    small, large = shapes
    if len(small) != 4 or small[1] != large[1] or small[2:] == large[2:]:
        raise WeightsError(f"{arch}: its body gives features of shape {small} at 64 px and {large} at 96 px, "
                           "not an (N, C, H, W) map; such a model is not supported here")
    return small[1]


class Float32LogSoftmax(nn.LogSoftmax):
    """fastai's final LogSoftmax, always in float32. Under bf16 autocast (`amp`, on a GPU or a CPU with native bf16)
    the Linear before it hands it bf16 logits, and a bf16 log-softmax rounds every log-probability to 3 significant
    digits: rows of exp() then sum to 1 only within about 0.5%, and every log loss scored from them is off."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def make_head(n_features: int, n_classes: int, ps=(0.25, 0.5), xtra_fc=(512,)) -> nn.Sequential:
    """fastai's head: [BN, Dropout, Linear, ReLU] per extra layer, then BN, Dropout, Linear(C), LogSoftmax."""
    sizes = [n_features, *xtra_fc, n_classes]
    ps = [ps] * (len(sizes) - 1) if isinstance(ps, (int, float)) else list(ps)
    if len(ps) != len(sizes) - 1:
        raise ValueError(f"ps needs {len(sizes) - 1} dropout values for xtra_fc={list(xtra_fc)}, got {ps}")
    layers: list[nn.Module] = []
    for index, (n_in, n_out, p) in enumerate(zip(sizes[:-1], sizes[1:], ps)):
        layers += [nn.BatchNorm1d(n_in), nn.Dropout(p), nn.Linear(n_in, n_out)]
        layers.append(nn.ReLU(inplace=True) if index < len(sizes) - 2 else Float32LogSoftmax(dim=1))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


class Classifier(nn.Module):
    """body -> AdaptiveConcatPool + flatten -> head, with fastai's three layer groups: the body's two (named
    submodules of the body, see `cut_body`) and the head."""

    def __init__(self, body: nn.Module, body_groups: list[list[str]], n_classes: int, ps=(0.25, 0.5),
                 xtra_fc=(512,), arch: str = "the backbone"):
        super().__init__()
        self.body = body
        self.body_groups = body_groups
        self.arch = arch  # for messages about the body (set_drop_path)
        self.pool = nn.Sequential(AdaptiveConcatPool2d(), nn.Flatten())
        self.n_features = 2 * feature_channels(arch, body)
        self.head = make_head(self.n_features, n_classes, ps, xtra_fc)
        # What the head was built with, for its checkpoint: the next size and predict rebuild it from these.
        self.ps = [module.p for module in self.head if isinstance(module, nn.Dropout)]
        self.xtra_fc = list(xtra_fc)
        self.n_trainable_groups = len(self.layer_groups)
        self.body_batchnorm_frozen = False
        self.frozen_batchnorm_trains = False

    @property
    def layer_groups(self) -> list[nn.Module]:
        body_groups = [nn.ModuleList(self.body.get_submodule(name) for name in names) for names in self.body_groups]
        return [*body_groups, nn.Sequential(self.pool, self.head)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled activations fastai precomputed: the head's input."""
        return self.pool(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def freeze_to(self, n: int) -> None:
        """Train only layer groups n, n+1, ... (fastai `freeze_to`); freeze() is freeze_to(-1), unfreeze() is 0.
        With `train_bn`, the BatchNorm layers of the frozen groups train too."""
        groups = self.layer_groups
        first_trainable = n % len(groups)
        for index, group in enumerate(groups):
            for module in group.modules():
                trains = index >= first_trainable or (self.frozen_batchnorm_trains and is_batchnorm(module))
                for parameter in module.parameters(recurse=False):
                    parameter.requires_grad_(trains)
        self.n_trainable_groups = len(groups) - first_trainable
        self.train(self.training)

    def freeze(self) -> None:
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        self.freeze_to(0)

    def bn_freeze(self, frozen: bool = True) -> None:
        """fastai 0.7's `learn.bn_freeze(True)`: every BatchNorm of the body keeps its pretrained running statistics
        (eval mode) even where its group trains; its scale and shift still learn."""
        self.body_batchnorm_frozen = frozen
        self.train(self.training)

    def train_bn(self, trains: bool = True) -> None:
        """fastai v2's `train_bn`: the BatchNorm layers of frozen groups train (scale, shift and running statistics)
        while the rest of those groups stays frozen. 0.7 kept them as they were; v2 trains them so that the
        statistics move to the new images while only the head learns, before the body is unfrozen."""
        self.frozen_batchnorm_trains = trains
        self.freeze_to(len(self.layer_groups) - self.n_trainable_groups)

    def train_as_size(self, params: dict) -> None:
        """What trains at a fine-tune size (its slice's unfreeze and bn_freeze, the recipe's train_bn): the size's
        fits and its lr_find must see the same model."""
        self.unfreeze() if params["unfreeze"] else self.freeze()
        self.bn_freeze(params["bn_freeze"])
        self.train_bn(params["train_bn"])

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            # BatchNorm in frozen groups keeps its running statistics (eval mode), as fastai 0.7 did, unless
            # train_bn; bn_freeze keeps the whole body's.
            if self.body_batchnorm_frozen:
                n_frozen = len(self.body_groups)
            else:
                n_frozen = 0 if self.frozen_batchnorm_trains else len(self.layer_groups) - self.n_trainable_groups
            for group in self.layer_groups[:n_frozen]:
                for module in group.modules():
                    if is_batchnorm(module):
                        module.eval()
        return self


class ImageClassifier(nn.Module):
    """uint8 images (N, 3, H, W) in, log-probabilities out: the classifier with its backbone's normalisation in
    front. What the bundle's ONNX files hold, and what deterministic TTA runs, so that both compute the same."""

    def __init__(self, classifier: Classifier, preprocessing: dict):
        super().__init__()
        self.classifier = classifier
        # (x / 255 - mean) / std as one subtraction and one division, the same float32 operations in torch and ONNX
        self.register_buffer("mean", torch.tensor(preprocessing["mean"], dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(preprocessing["std"], dtype=torch.float32).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier((images.float() - self.mean) / self.std)


def build_classifier(arch: str, weights: str, n_classes: int, ps=(0.25, 0.5), xtra_fc=(512,)) -> Classifier:
    backbone = backbones.resolve(arch)
    body, groups = cut_body(backbone, backbones.create(backbone, weights))
    return Classifier(body=body, body_groups=groups, n_classes=n_classes, ps=ps, xtra_fc=xtra_fc, arch=arch)


def drop_path_blocks(body: nn.Module) -> list[nn.Module]:
    """A timm body's blocks that hold a `drop_path` layer (nn.Identity when built without one), in build order."""
    if not isinstance(body, TimmBody):
        return []  # torchvision bodies never get timm imported
    drop_path_type = importlib.import_module("timm.layers").DropPath
    return [module for module in body.modules()
            if isinstance(getattr(module, "drop_path", None), (nn.Identity, drop_path_type))]


def supports_drop_path(model: Classifier) -> bool:
    return bool(drop_path_blocks(model.body))


def set_drop_path(model: Classifier, rate: float) -> int:
    """Stochastic depth on the body's residual blocks, mirroring timm's `drop_path_rate` schedule (its EfficientNet
    builder, `drop_path_rate * block_idx / total_blocks`): block i of n, in build order, drops its residual branch
    with probability rate * i / n (nn.Identity where that is 0, as timm builds it). Rate 0 puts back nn.Identity,
    so a later size can turn it off. Set on the built model, not through timm.create_model, because the checkpoints
    a size restores were built with drop_path_rate 0; DropPath has no parameters, so the state_dict keys stay and
    checkpoints load either way. Returns the number of blocks set; a body without such blocks refuses a rate > 0."""
    if not 0 <= rate <= 1:
        raise ValueError(f"drop_path rate {rate} is not a probability in [0, 1]")
    blocks = drop_path_blocks(model.body)
    if rate and not blocks:
        raise ValueError(f"drop_path {rate} on {model.arch}: drop_path needs a timm backbone with residual blocks "
                         f"that hold a drop_path layer (timm's EfficientNets, MobileNets, ...); {model.arch} has none")
    drop_path_layer = importlib.import_module("timm.layers").DropPath if blocks else None
    for index, block in enumerate(blocks):
        probability = rate * index / len(blocks)
        # A new module starts in training mode: on a model already in eval it would drop paths at inference.
        block.drop_path = (drop_path_layer(probability) if probability else nn.Identity()).train(block.training)
    return len(blocks)


def build_seeded_classifier(params: dict, n_classes: int) -> Classifier:
    """The same backbone in every stage: seeded, so a from-scratch body is identical wherever it is rebuilt.
    `params`: a complete slice of seed and the model section (pipeline.recipe.defaults fills one)."""
    torch.manual_seed(params["seed"])
    return build_classifier(params["arch"], params["weights"], n_classes, params["ps"], params["xtra_fc"])


def checkpoint_meta(params: dict, classes: list[str], stage: str, model: Classifier, amp: bool,
                    params_hash: str) -> dict:
    """Plain data only (loads with weights_only=True); params_hash ties the weights to the recipe slice that made
    them (the stage hashes the slice as passed). `images` says how the images reached the model (resize rule,
    augmentations, the backbone's preprocessing) and `amp` whether its inference (each epoch's validation) ran under
    bf16 autocast, for `pipeline.stages.predict`.
    `params`: a complete slice of arch, size and the transforms section; ps and xtra_fc are the model's own (a
    fine-tune size's slice has none: its head is the one it restored)."""
    images = {**params.get("images", {}), "augmentation": params["augmentation"], "max_zoom": params["max_zoom"],
              "preprocessing": preprocessing_of(params)}
    return {"classes": classes, "arch": params["arch"], "size": params["size"], "stage": stage,
            "ps": model.ps, "xtra_fc": model.xtra_fc,
            "n_features": model.n_features, "body_groups": model.body_groups, "images": images, "amp": amp,
            "params_hash": params_hash}


def preprocessing_of(params: dict) -> dict:
    """The backbone's preprocessing (mean, std, interpolation): the workflow passes it in a stage's params; a stage
    run by hand without it gets the arch's own."""
    return params.get("preprocessing") or backbones.preprocessing(backbones.resolve(params["arch"]))


def save_checkpoint(model: nn.Module, path: str | Path, meta: dict) -> None:
    """Weights plus plain metadata (classes, arch, size, ...): everything `torch.load(weights_only=True)` accepts."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)


def load_checkpoint(path: str | Path, expect: dict) -> tuple[dict, dict]:
    """(state_dict, meta) of a checkpoint whose metadata agrees with `expect` (e.g. classes, arch)."""
    if not Path(path).is_file():
        raise WeightsError(f"checkpoint {path} not found")
    checkpoint = backbones.load_torch_file(
        path, f"checkpoint {path} cannot be read (truncated, or not a model.pt the pipeline wrote)")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise WeightsError(f"checkpoint {path} holds a {type(checkpoint).__name__} without a state_dict: not a "
                           "model.pt the pipeline wrote")
    meta = checkpoint.get("meta", {})
    for key, wanted in expect.items():
        if meta.get(key) != wanted:
            raise WeightsError(f"checkpoint {path} has {key}={meta.get(key)!r}, but the recipe needs {wanted!r}")
    return checkpoint["state_dict"], meta


def restore_model(checkpoint: str | Path, arch: str, classes: list[str]) -> tuple[Classifier, dict]:
    """Rebuild the architecture (no weight download: the checkpoint has the weights) and load the checkpoint."""
    state, meta = load_checkpoint(checkpoint, {"classes": classes, "arch": arch})
    if missing := [key for key in ("size", "ps", "xtra_fc") if key not in meta]:
        raise WeightsError(f"checkpoint {checkpoint} lacks {', '.join(missing)} in its meta: not a model.pt the "
                           "pipeline wrote")
    backbone = backbones.resolve(arch)
    body, groups = cut_body(backbone, backbones.create(backbone, "none", quiet=True))
    model = Classifier(body=body, body_groups=groups, n_classes=len(classes), ps=meta["ps"], xtra_fc=meta["xtra_fc"],
                       arch=arch)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsError(f"checkpoint {checkpoint} does not fit {arch} with its head: {' '.join(str(error).split())[:400]}") from None
    return model, meta


def describe(arch: str, weights: str) -> dict:
    """Check `model.arch` and `model.weights` for real (resolve, fetch once if need be, load, cut the body) and say
    what later stages need: the library, the preprocessing, how many residual blocks take stochastic depth (asked of
    the built body: what the plan-time check of `drop_path` reads), and a digest of the weights file's content, which
    keys every cache from precompute on (a file replaced at the same path changes it)."""
    backbone = backbones.resolve(arch)
    body = cut_body(backbone, backbones.create(backbone, weights, quiet=True))[0]
    feature_channels(arch, body)  # an NCHW map, or an error
    path = backbones.weights_file(backbone, weights)
    return {"arch": arch, "source": backbone.source, "weights": weights,
            "drop_path_blocks": len(drop_path_blocks(body)),
            "weights_file": str(path) if path else None,
            "weights_digest": file_digest(path) if path else "none",
            "preprocessing": backbones.preprocessing(backbone)}
