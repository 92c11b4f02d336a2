"""Predict a competition's test images offline with the models of a run: the bundle's `predict.py` is this file.

    python predict.py TEST_DIR [--out submission.csv] [--sample sample_submission.csv] [--threads N]
        [--batch-size B] [--workers W] [--models fp32|int8]

Beside it, `manifest.json` says how the run made its submission and `models/` holds its ONNX models (each with its
backbone's normalisation inside: uint8 images in, log-probabilities out). It needs NumPy, Pillow, tqdm and ONNX
Runtime (requirements.txt): no torch, no pickle, nothing of the pipeline.

The workflow imports the first half of this file, so that each step exists once: how an image is read and resized
(the resize cache's rule, JPEG re-encoding included), the deterministic TTA views, and how passes, snapshots, folds,
members, calibration and the submission combine. Only the second half, from `Bundle` on, is the bundle's own.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import sys
import time
import warnings
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

BUNDLE_VERSION = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
EXIF_ORIENTATION = 0x0112


# --- Images: which files, read how, resized as the resize cache resizes them ---

def natural_key(text: str):
    """Sort 'img2' before 'img10' (Dogs vs Cats test ids are numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def image_files(folder: Path) -> list[Path]:
    """The image files directly in `folder` (by suffix), in natural order: a competition's test set."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                  key=lambda p: natural_key(p.name))


def load_rgb(source, at_least: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image (a path or a file object) upright (EXIF orientation applied) as 8-bit RGB, whatever its mode.

    `at_least` (width, height): let a JPEG decode at 1/2, 1/4 or 1/8 scale while both sides stay at least that big
    (Pillow's draft mode) - much less work when the image will be shrunk anyway.
    """
    with Image.open(source) as image:
        if at_least is not None:
            image.draft("RGB", at_least)
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit greyscale: scale to 8 bits instead of letting convert() saturate it.
            image = image.point(lambda v: v / 256).convert("L")
        if image.mode in ("RGBA", "LA", "P", "PA"):
            # Transparent pixels become white, not whatever colour hides under alpha 0.
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        return image.convert("RGB")


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed: EXIF orientations 5-8 store the image sideways."""
    width, height = image.size
    return (height, width) if image.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8) else (width, height)


def inspect_image(path, max_pixels: int | None = Image.MAX_IMAGE_PIXELS) -> tuple[int, int, str]:
    """(width, height, mode) as displayed (EXIF rotation applied), after decoding the whole file.

    Raises on anything a later stage could not decode: empty, non-image or truncated files, and images over
    `max_pixels` (Pillow's decompression-bomb limit, made an error rather than a warning).
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            width, height = upright_size(image)
            mode = image.mode
            image.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale, still reading every byte (finds truncation)
            image.load()
    return width, height, mode


def resized_size(width: int, height: int, shorter_side: int) -> tuple[int, int]:
    """fastai 0.7: ratio = targ/min(w, h); each side max(floor(side*ratio), targ). 500x375 -> 453x340."""
    ratio = shorter_side / min(width, height)
    return max(math.floor(width * ratio), shorter_side), max(math.floor(height * ratio), shorter_side)


def resized(source, shorter_side: int, draft: bool = True) -> Image.Image:
    """The image as the resize cache holds it, before it is encoded: shorter side `shorter_side`, bilinear."""
    with Image.open(source) as header:
        target = resized_size(*upright_size(header), shorter_side)  # from the full size, whatever draft decodes
    # A draft whose shorter side is still >= shorter_side has both sides >= the target's.
    image = load_rgb(source, (shorter_side, shorter_side) if draft else None)
    return image.resize(target, Image.BILINEAR)


def save_like_cache(image: Image.Image, destination, suffix: str, jpeg_quality: int) -> None:
    """Encode as the cache stores an image named `...suffix`: JPEG at `jpeg_quality`, else the suffix's format."""
    if suffix.lower() in (".jpg", ".jpeg"):
        image.save(destination, format="JPEG", quality=jpeg_quality)
    else:
        image.save(destination, format=Image.registered_extensions()[suffix.lower()])


def as_cached(source: Path, rule: dict) -> Image.Image:
    """What a stage reading the resize cache sees of `source`: resized, encoded as the cache encodes it (JPEG's
    losses included), decoded again. `rule`: shorter_side, jpeg_quality, jpeg_draft."""
    buffer = io.BytesIO()
    save_like_cache(resized(source, rule["shorter_side"], rule["jpeg_draft"]), buffer, source.suffix,
                    rule["jpeg_quality"])
    buffer.seek(0)
    return load_rgb(buffer)


# --- Deterministic TTA: fixed zoomed crops and symmetries, the same pixels in the pipeline and the bundle ---

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
# The symmetries of the square each augmentation allows (fastai 0.7: side_on flips, top_down takes any dihedral).
SYMMETRIES = {"side_on": ("identity", "flip"), "basic": ("identity",), "none": ("identity",),
              "top_down": ("identity", "flip", "rotate_90", "rotate_180", "rotate_270", "flip_vertical",
                           "transpose", "transverse")}
_TRANSPOSE = {"flip": Image.Transpose.FLIP_LEFT_RIGHT, "rotate_90": Image.Transpose.ROTATE_90,
              "rotate_180": Image.Transpose.ROTATE_180, "rotate_270": Image.Transpose.ROTATE_270,
              "flip_vertical": Image.Transpose.FLIP_TOP_BOTTOM, "transpose": Image.Transpose.TRANSPOSE,
              "transverse": Image.Transpose.TRANSVERSE}
_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
             "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


def tta_views(augmentation: str, max_zoom: float) -> list[dict]:
    """Every view deterministic TTA can take, the plain one (the validation transform's centre crop) first: the
    centre crop's other symmetries, then each corner and the centre of the image zoomed by `max_zoom`, each with
    every symmetry. Pass k of n_aug uses view k. fastai v1's TTA was deterministic in the same way (four corner crops
    of a zoom, each flipped); fastai 0.7's drew the training augmentations at random, which only torch reproduces."""
    crops = [(1.0, "center")] + ([(max_zoom, corner) for corner in CORNERS] + [(max_zoom, "center")]
                                 if max_zoom > 1 else [])
    return [{"zoom": zoom, "crop": crop, "symmetry": symmetry}
            for zoom, crop in crops for symmetry in SYMMETRIES[augmentation]]


def view(image: Image.Image, size: int, interpolation: str, spec: dict) -> np.ndarray:
    """One TTA view as a (3, size, size) uint8 array: shorter side to size * zoom (torchvision's Resize rule), the
    crop, the symmetry."""
    width, height = image.size
    short = int(size * spec["zoom"])
    long = int(short * max(width, height) / min(width, height))
    new_width, new_height = (short, long) if width <= height else (long, short)
    image = image.resize((new_width, new_height), _RESAMPLE[interpolation])
    top, left = {"center": (int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))),
                 "top_left": (0, 0), "top_right": (0, new_width - size), "bottom_left": (new_height - size, 0),
                 "bottom_right": (new_height - size, new_width - size)}[spec["crop"]]
    image = image.crop((left, top, left + size, top + size))
    if spec["symmetry"] != "identity":
        image = image.transpose(_TRANSPOSE[spec["symmetry"]])
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


# --- Combining predictions: TTA passes, snapshots and folds, members, calibration, the submission ---

PLAIN, AUGMENTED = 0, 1
FLOOR = 1e-15  # a probability can be exactly 0; its log must stay finite
CALIBRATION_FLOOR = 1e-12


def from_log_probs(log_probs: np.ndarray) -> np.ndarray:
    """(n_aug + 1, N, C) log-probabilities of one model -> (2, N, C) probabilities: the plain pass, and the mean of
    the augmented passes (the plain pass again when there are none)."""
    probs = np.exp(log_probs)
    augmented = probs[1:].mean(axis=0) if len(probs) > 1 else probs[0]
    return np.stack([probs[0], augmented])


def tta_mean(passes: np.ndarray, n_aug: int) -> np.ndarray:
    """fastai 0.7's TTA prediction: the equal mean of the plain and the n_aug augmented passes, in float64 and
    renormalised (passes stored as float32 sum to 1 only to ~1e-7, which scikit-learn's log_loss warns about)."""
    mean = (passes[PLAIN].astype(np.float64) + n_aug * passes[AUGMENTED]) / (n_aug + 1)
    return mean / mean.sum(axis=-1, keepdims=True)


def average(predictions: list[np.ndarray], how: str = "arithmetic") -> np.ndarray:
    """Ensemble of probability arrays (folds or snapshots): their mean, or their geometric mean renormalised over
    the class axis (the last), which punishes a class any member finds unlikely."""
    stacked = np.stack(predictions)
    if how == "arithmetic":
        return stacked.mean(axis=0)
    if how != "geometric":
        raise ValueError(f"unknown average {how!r}")
    geometric = np.exp(np.log(np.clip(stacked, FLOOR, None)).mean(axis=0))
    return geometric / geometric.sum(axis=-1, keepdims=True)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def combine(member_probs: np.ndarray, weights, space: str) -> np.ndarray:
    """The blend of (M, N, C) probabilities with M weights: their weighted mean (`probs`), or the softmax of their
    weighted log-probabilities (`log_probs`, a weighted geometric mean renormalised over the classes)."""
    member_probs, weights = np.asarray(member_probs, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    if space == "probs":
        blended = np.tensordot(weights, member_probs, axes=1)
        return blended / blended.sum(axis=-1, keepdims=True)
    if space == "log_probs":
        return softmax(np.tensordot(weights, np.log(np.clip(member_probs, FLOOR, None)), axes=1))
    raise ValueError(f"unknown blend space {space!r}; expected probs or log_probs")


def stacker_features(member_probs: np.ndarray) -> np.ndarray:
    """(N, M * C): the members' log-probabilities side by side, what the stacker's logistic regression reads."""
    logs = np.log(np.clip(np.asarray(member_probs, dtype=np.float64), FLOOR, None))
    return logs.transpose(1, 0, 2).reshape(logs.shape[1], -1)


def stacked(member_probs: np.ndarray, stacker: dict, n_classes: int) -> np.ndarray:
    """scikit-learn's fitted LogisticRegression.predict_proba from its coefficients: softmax of the decision for
    several classes, the logistic of it for two; a class the fit never saw keeps probability 0."""
    decision = stacker_features(member_probs) @ np.asarray(stacker["coef"]).T + np.asarray(stacker["intercept"])
    if decision.shape[1] == 1:
        positive = 1 / (1 + np.exp(-decision[:, 0]))
        seen = np.stack([1 - positive, positive], axis=1)
    else:
        seen = softmax(decision)
    probs = np.zeros((len(decision), n_classes))
    probs[:, stacker["classes"]] = seen
    return probs


def calibrated(passes: np.ndarray, plain_weight: float, temperature: float) -> np.ndarray:
    """softmax(log(w * plain + (1 - w) * augmented) / T): the calibrate stage's fitted plain-pass weight and
    temperature applied to (2, N, C) passes."""
    passes = np.asarray(passes, dtype=np.float64)
    mixed = plain_weight * passes[PLAIN] + (1 - plain_weight) * passes[AUGMENTED]
    return softmax(np.log(np.clip(mixed, CALIBRATION_FLOOR, None)) / temperature)


def submission_values(probs: np.ndarray, classes: list[str], submission: dict) -> tuple[list[str], np.ndarray]:
    """(value columns, values) of the Kaggle CSV: one probability per class in `columns`' order, clipped to [clip,
    1 - clip] and renormalised; or, with a positive class (Dogs vs Cats), `label` = its probability, clipped."""
    clip = submission["clip"]
    if submission.get("positive_class") is not None:
        return ["label"], probs[:, [classes.index(submission["positive_class"])]].clip(clip, 1 - clip)
    columns = submission["columns"]
    values = np.asarray(probs, dtype=np.float64)[:, [classes.index(name) for name in columns]].clip(clip, 1 - clip)
    return columns, values / values.sum(axis=1, keepdims=True)


# --- The bundle: a manifest, ONNX models, and the test images run through them ---

class BundleError(Exception):
    """A bundle, test folder or argument that cannot work: the message names the file or argument."""


def sha256_of(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def image_error(error: Exception) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def prepare(path: Path, inputs: list[dict], max_pixels: int) -> tuple[str | None, list[np.ndarray]]:
    """One test image as each input group's models see it: (None, [(passes, 3, size, size) uint8 per group]), or
    (why it cannot be read, []) for an image the pipeline would have left out (its image-stats checks)."""
    try:
        inspect_image(path, max_pixels)
        arrays = []
        for spec in inputs:
            image = as_cached(path, spec)
            arrays.append(np.stack([view(image, spec["size"], spec["interpolation"], one) for one in spec["views"]]))
        return None, arrays
    except Exception as error:  # any unreadable file: the class prior, as the pipeline gives it
        return image_error(error), []


class Bundle:
    """manifest.json and the models it names, checked: the version, every file and its checksum."""

    def __init__(self, folder: Path, models: str = "fp32"):
        self.folder = folder
        manifest_path = folder / "manifest.json"
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as error:
            raise BundleError(f"{manifest_path}: cannot read the bundle's manifest ({image_error(error)})") from None
        version = self.manifest.get("bundle_version")
        if not isinstance(version, int) or version > BUNDLE_VERSION:
            raise BundleError(f"{manifest_path}: bundle version {version!r} is newer than this predict.py reads "
                              f"({BUNDLE_VERSION}); use the predict.py that came with the bundle")
        self.files = self._model_files(models)

    def _model_files(self, kind: str) -> dict[str, Path]:
        """{model name in the manifest: the file to run}, each checked against the checksum the manifest holds."""
        models = self.manifest["models"]
        if kind == "int8" and not all("int8" in model for model in models.values()):
            raise BundleError(f"{self.folder / 'manifest.json'}: this bundle has no int8 models (package.quantize)")
        files = {}
        for name, model in models.items():
            entry = model["int8"] if kind == "int8" else model
            path = self.folder / entry["file"]
            if not path.is_file():
                raise BundleError(f"{path}: model file missing from the bundle")
            if sha256_of(path) != entry["sha256"]:
                raise BundleError(f"{path}: checksum differs from manifest.json's: the file is damaged or not this "
                                  "bundle's")
            files[name] = path
        return files


def sessions(files: dict[str, Path], threads: int, provider: str = "auto") -> dict:
    """{model name: an ONNX Runtime session}: on CUDA where onnxruntime-gpu finds a GPU (unless provider is cpu)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if provider == "cuda" and "CUDAExecutionProvider" not in available:
        raise BundleError("--provider cuda: ONNX Runtime has no CUDA provider here (pip install onnxruntime-gpu)")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] \
        if provider != "cpu" and "CUDAExecutionProvider" in available else ["CPUExecutionProvider"]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    return {name: onnxruntime.InferenceSession(str(path), options, providers=providers) for name, path in files.items()}


class Predictor:
    """The run's way of turning its models' passes into one prediction: snapshots and folds averaged, members
    blended, calibrated; `sessions` run the models by their manifest names."""

    def __init__(self, manifest: dict, sessions: dict):
        self.manifest, self.sessions = manifest, sessions
        self.inputs = [member["input"] for member in manifest["members"]]
        self.provider = next(iter(sessions.values())).get_providers()[0]

    def fold(self, position: int) -> Predictor:
        """The same run with each member reduced to its fold at `position`: what predicts that fold's held-out rows."""
        members = [{**member, "folds": [member["folds"][position]]} for member in self.manifest["members"]]
        return Predictor({**self.manifest, "members": members}, self.sessions)

    def model_passes(self, name: str, images: np.ndarray) -> np.ndarray:
        """(2, N, C) passes of one model over (P, N, 3, H, W) uint8 views."""
        n_passes, n_images = images.shape[:2]
        log_probs = self.sessions[name].run(None, {"images": images.reshape(-1, *images.shape[2:])})[0]
        return from_log_probs(log_probs.astype(np.float64).reshape(n_passes, n_images, -1))

    def member_passes(self, member: dict, images: np.ndarray, usable: np.ndarray) -> np.ndarray:
        """(2, N, C): each fold's snapshots averaged, unreadable images given the fold's class prior, then the folds
        averaged, as the TTA and oof stages did."""
        folds = []
        for fold in member["folds"]:
            passes = np.tile(np.asarray(fold["prior"], dtype=np.float64), (2, len(usable), 1))
            if usable.any():
                passes[:, usable] = average([self.model_passes(name, images[:, usable]) for name in fold["models"]])
            folds.append(passes)
        return average(folds, member["fold_average"]) if len(folds) > 1 else folds[0]

    def predict(self, arrays: list[np.ndarray], usable: np.ndarray) -> np.ndarray:
        """(N, C) calibrated probabilities of a batch; `arrays` per input group: (N, P, 3, H, W), zeros where not
        usable."""
        members = self.manifest["members"]
        member_passes = [self.member_passes(member, arrays[index].swapaxes(0, 1), usable)
                         for index, member in enumerate(members)]
        blend = self.manifest["blend"]
        if blend is None:
            passes = member_passes[0]
        else:
            member_probs = np.stack([tta_mean(passes, member["n_aug"])
                                     for passes, member in zip(member_passes, members)])
            blended = combine(member_probs, blend["weights"], blend["space"]) if blend["method"] == "weights" \
                else stacked(member_probs, blend["stacker"], len(self.manifest["classes"]))
            passes = np.stack([blended, blended])
        calibration = self.manifest["calibration"]
        probs = calibrated(passes, calibration["plain_weight"], calibration["temperature"])
        probs[~usable] = passes[PLAIN][~usable]  # a prior stays a prior: a temperature would sharpen it into a guess
        return probs


def batches_of(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def worker_pool(workers: int):
    """Processes that read and preprocess images. Start it before any ONNX Runtime session: a process forked while
    a runtime's threads hold a lock could wait for it for ever."""
    import multiprocessing

    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    return context.Pool(workers)


def predict_folder(predictor: Predictor, files: list[Path], batch_size: int, pool, progress=None,
                   on_unreadable=print) -> np.ndarray:
    """(N, C) probabilities of `files`, read and preprocessed by `pool` (`worker_pool`) while the models run."""
    from functools import partial

    inputs, max_pixels = predictor.inputs, predictor.manifest["test_images"]["max_pixels"]
    task = partial(prepare, inputs=inputs, max_pixels=max_pixels)
    results, pending = [], deque()
    for batch in batches_of(files, batch_size) + [None]:
        if batch is not None:
            pending.append((batch, pool.map_async(task, batch)))  # the next batch decodes while this one runs
        if len(pending) > 1 or (batch is None and pending):
            done, prepared = pending.popleft()
            results.append(_predict_batch(predictor, done, prepared.get(), inputs, on_unreadable))
            if progress is not None:
                progress.update(len(done))
    return np.concatenate(results)


def _predict_batch(predictor: Predictor, files: list[Path], prepared: list, inputs: list[dict],
                   on_unreadable) -> np.ndarray:
    usable = np.array([error is None for error, _ in prepared])
    for path, (error, _) in zip(files, prepared):
        if error is not None:
            on_unreadable(f"{path}: cannot read as an image ({error}); it gets the training class prior")
    arrays = []
    for index, spec in enumerate(inputs):
        shape = (len(spec["views"]), 3, spec["size"], spec["size"])
        arrays.append(np.stack([found[index] if error is None else np.zeros(shape, np.uint8)
                                for error, found in prepared]))
    return predictor.predict(arrays, usable)


def read_sample_ids(sample: Path) -> list[str]:
    import csv

    try:
        with open(sample, newline="", encoding="utf-8-sig") as file:
            rows = list(csv.reader(file))
    except OSError as error:
        raise BundleError(f"{sample}: cannot read the sample submission ({image_error(error)})") from None
    if not rows or rows[0][:1] != ["id"]:
        raise BundleError(f"{sample}: its first column must be 'id'")
    return [row[0] for row in rows[1:] if row]


def submission_rows(ids: list[str], probs: np.ndarray, manifest: dict, sample: Path | None):
    """(header, rows) of the CSV: in the sample submission's order when one is given (every id once, the same ids
    as the test folder), else in the test ids' natural order."""
    columns, values = submission_values(probs, manifest["classes"], manifest["submission"])
    position = {image_id: index for index, image_id in enumerate(ids)}
    if sample is not None:
        order = read_sample_ids(sample)
        if len(set(order)) != len(order) or set(order) != set(ids):
            missing, extra = sorted(set(order) - set(ids)), sorted(set(ids) - set(order))
            raise BundleError(f"{sample}: its ids differ from the test folder's: {len(missing)} without an image "
                              f"(e.g. {missing[:3]}), {len(extra)} images not in it (e.g. {extra[:3]}), or ids twice")
    else:
        order = sorted(ids, key=natural_key)
    rows = [[image_id, *(f"{value:.10g}" for value in values[position[image_id]])] for image_id in order]
    return ["id", *columns], rows


def write_submission(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Written under a temporary name and renamed: a killed run never leaves half a submission."""
    import csv

    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(temporary, path)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("test_dir", metavar="TEST_DIR", type=Path, help="the folder of test images")
    parser.add_argument("--out", type=Path, default=Path("submission.csv"))
    parser.add_argument("--sample", type=Path, help="sample_submission.csv: rows in its order, its ids checked")
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1,
                        help="ONNX Runtime's threads (default: every core)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per batch (each with its views)")
    parser.add_argument("--workers", type=positive_int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="processes that read and preprocess images while the models run")
    parser.add_argument("--models", choices=["fp32", "int8"], default="fp32",
                        help="int8: the quantised models, where the bundle has them (manifest.json: their log loss)")
    parser.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: ONNX Runtime's CUDA provider when onnxruntime-gpu and a GPU are there")
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = argument_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        bundle = Bundle(args.bundle, args.models)
        files = image_files(args.test_dir)
        if not files:
            raise BundleError(f"{args.test_dir}: no test images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        from tqdm import tqdm

        with worker_pool(args.workers) as pool:
            predictor = Predictor(bundle.manifest, sessions(bundle.files, args.threads, args.provider))
            print(f"{len(files)} images, {len(predictor.sessions)} {args.models} models on {predictor.provider}, "
                  f"{args.threads} threads, {args.workers} workers", flush=True)
            with tqdm(total=len(files), unit="img", mininterval=2.0, file=sys.stdout) as progress:
                probs = predict_folder(predictor, files, args.batch_size, pool, progress,
                                       lambda line: progress.write(f"warning: {line}"))
        header, rows = submission_rows([path.stem for path in files], probs, bundle.manifest, args.sample)
        write_submission(args.out, header, rows)
    except BundleError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    seconds = time.perf_counter() - started
    rate = len(files) / seconds
    print(f"{args.out}: {len(rows)} rows in {seconds:.1f} s, {rate:.1f} images/s; 10,000 images would take about "
          f"{10_000 / rate / 60:.1f} min here", flush=True)


if __name__ == "__main__":
    main()
