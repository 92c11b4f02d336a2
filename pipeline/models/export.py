"""Checkpoints as ONNX models for the bundle (`snakemake package`): uint8 images in, log-probabilities out, the
backbone's normalisation inside the graph (`pipeline.models.classifier.ImageClassifier`), a dynamic batch axis.

The export uses torch.onnx's TorchScript-based exporter (`dynamo=False`): 1.2 s for EfficientNet-Lite0 where the
dynamo exporter took 60 s (issue 31's measurement). Each export is kept in a cache keyed by the checkpoint's content
and everything else that decides the graph (library versions, this code), so remaking a bundle after a calibration
edit exports nothing again. int8: ONNX Runtime's static quantisation (QDQ, per-channel weights), calibrated on
training images.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from pipeline.io import atomic_path
from pipeline.models.classifier import ImageClassifier, load_checkpoint, restore_model
from pipeline.offline.predictor import sha256_of

OPSET = 17
INPUT, OUTPUT = "images", "log_probs"
# What decides an exported graph besides the checkpoint: the libraries that build and write it, and this code.
DECIDING_LIBRARIES = ("torch", "torchvision", "timm", "onnx")
DECIDING_CODE = ("export.py", "classifier.py", "backbones.py")


class ExportError(RuntimeError):
    """A model that does not export, or whose export does not compute what torch computes."""


def content_key(checkpoint: Path) -> str:
    """The cache key of a checkpoint's export: its bytes, the deciding libraries' versions and code, the opset."""
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as file:
        digest.update(hashlib.file_digest(file, "sha256").digest())
    here = Path(__file__).resolve().parent
    deciding = {"opset": OPSET, "libraries": [metadata.version(name) for name in DECIDING_LIBRARIES],
                "code": [hashlib.sha256((here / name).read_bytes()).hexdigest() for name in DECIDING_CODE]}
    digest.update(json.dumps(deciding, sort_keys=True).encode())
    return digest.hexdigest()[:24]


class StaticSamePadding(torch.nn.Module):
    """A timm TF-"same" convolution (EfficientNet-Lite0's strided ones) for one input size: the padding it computes
    from the input's size at run time, as constants. Traced, the run-time arithmetic becomes Shape/Ceil/Pad nodes,
    which ONNX Runtime's int8 convolution mishandles ("QLinearConv ... Invalid input shape"); each bundled model has
    one input size, so nothing is lost. The pads are timm's own (`pad_same_arg`)."""

    def __init__(self, conv: torch.nn.Conv2d, input_size: list[int]):
        super().__init__()
        from timm.layers.padding import pad_same_arg

        self.conv = conv
        self.pad = pad_same_arg(input_size, conv.weight.shape[-2:], conv.stride, conv.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        return torch.nn.functional.conv2d(torch.nn.functional.pad(x, self.pad), conv.weight, conv.bias, conv.stride,
                                          0, conv.dilation, conv.groups)


def with_static_padding(module: torch.nn.Module, size: int) -> torch.nn.Module:
    """`module` with each timm TF-"same" convolution replaced by its `StaticSamePadding` at input `size` (in place)."""
    try:
        from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport
    except ImportError:
        return module
    dynamic = {name: child for name, child in module.named_modules()
               if isinstance(child, (Conv2dSame, Conv2dSameExport))}
    if not dynamic:
        return module
    input_sizes = {}

    def record(name: str):
        def hook(child, args) -> None:  # a pre-hook that returned a value would replace the convolution's input
            input_sizes[name] = list(args[0].shape[-2:])
        return hook

    hooks = [child.register_forward_pre_hook(record(name)) for name, child in dynamic.items()]
    with torch.inference_mode():
        module.eval()(torch.zeros(1, 3, size, size, dtype=torch.uint8))
    for hook in hooks:
        hook.remove()
    for name, child in dynamic.items():
        parent_name, _, attribute = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attribute,
                StaticSamePadding(child, input_sizes[name]))
    return module


def write_onnx(module: torch.nn.Module, size: int, destination) -> None:
    """`module` (uint8 images in, one input size) as an ONNX graph with a dynamic batch axis, to a path or a file
    object."""
    module = with_static_padding(module, size)
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo's, chosen here for its speed (module docstring).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # "Only steps=1 can be constant folded": a strided slice left to run time, which is what it should do
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(module.eval(), (example,), destination, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=OPSET,
                          dynamo=False)


def session(model, threads: int = 1):
    """An ONNX Runtime CPU session for a path or serialised bytes."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                        providers=["CPUExecutionProvider"])


def agreement(module: torch.nn.Module, onnx_model, size: int, seed: int = 0) -> float:
    """The largest probability difference between torch and ONNX Runtime on random uint8 images of `size`."""
    images = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        expected = module.eval()(images).exp().numpy()
    found = np.exp(session(onnx_model).run(None, {INPUT: images.numpy()})[0])
    return float(np.abs(found - expected).max())


def export_checkpoint(checkpoint: Path, cache_dir: Path) -> tuple[Path, dict]:
    """The checkpoint's ONNX file in `cache_dir` (exported now, or found there by its content key) and what it was
    exported from."""
    _, meta = _checkpoint_meta(checkpoint)
    key = content_key(checkpoint)
    cached = cache_dir / f"{key}.onnx"
    source = {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256_of(checkpoint), "arch": meta["arch"],
              "size": meta["size"], "stage": meta.get("stage"), "preprocessing": meta["images"]["preprocessing"],
              "export_key": key, "opset": OPSET, "torch": metadata.version("torch")}
    if cached.is_file():
        return cached, {**source, "cached": True}
    model, meta = restore_model(checkpoint, meta["arch"], meta["classes"])
    module = ImageClassifier(model, meta["images"]["preprocessing"])
    buffer = io.BytesIO()
    write_onnx(module, meta["size"], buffer)
    difference = agreement(module, buffer.getvalue(), meta["size"])
    if difference > 1e-4:
        raise ExportError(f"{checkpoint}: its ONNX export predicts probabilities up to {difference:.2g} away from "
                          "torch's on the same images; the bundle would not reproduce the run")
    with atomic_path(cached) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return cached, {**source, "cached": False}


def _checkpoint_meta(checkpoint: Path) -> tuple[dict, dict]:
    state, meta = load_checkpoint(checkpoint, {})
    if "images" not in meta or "preprocessing" not in meta.get("images", {}):
        raise ExportError(f"{checkpoint}: its meta does not say how its images were preprocessed (a checkpoint older "
                          "than the bundle): rerun its stage")
    return state, meta


def copy_model(source: Path, destination: Path) -> str:
    """Copy an exported model into the bundle; its sha256, for the manifest."""
    with atomic_path(destination) as tmp:
        shutil.copyfile(source, tmp)
    return sha256_of(destination)


def exports_cleanly(arch: str, size: int = 64) -> str | None:
    """None if `arch` with the fastai head exports and agrees with torch (random weights, 2 classes); else why not.
    Asked before `snakemake package` plans anything (pipeline.workflow.backbone_check caches the answer)."""
    from pipeline.models import backbones
    from pipeline.models.classifier import Classifier, cut_body

    try:
        backbone = backbones.resolve(arch)
        body, groups = cut_body(backbone, backbones.create(backbone, "none", quiet=True))
        module = ImageClassifier(Classifier(body=body, body_groups=groups, n_classes=2, arch=arch),
                                 backbones.preprocessing(backbone))
        buffer = io.BytesIO()
        write_onnx(module, size, buffer)
        difference = agreement(module, buffer.getvalue(), size)
    except Exception as error:  # whatever the exporter or the runtime raise, said in one line
        return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
    return None if difference <= 1e-4 else f"its ONNX export differs from torch by {difference:.2g} in probability"


def quantize_int8(fp32: Path, destination: Path, calibration_batches: list[np.ndarray]) -> None:
    """ONNX Runtime's static int8 quantisation (QDQ, per-channel weights, uint8 activations) of an exported model,
    its activation ranges calibrated on `calibration_batches` (uint8 image batches)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration_batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: batch}

    logging.getLogger().setLevel(logging.ERROR)  # the quantiser logs a line per 1-d weight it leaves per-tensor
    with tempfile.TemporaryDirectory(prefix="lesson2-quantize-") as scratch, atomic_path(destination) as tmp:
        prepared = Path(scratch) / "prepared.onnx"  # shapes inferred and the graph optimised, as ONNX Runtime advises
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(str(prepared), str(tmp), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
