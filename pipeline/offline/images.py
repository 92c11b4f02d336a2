"""Predict a competition's test images offline with the models of a run: the bundle's `predict.py`.

    python predict.py TEST_DIR [--out submission.csv] [--sample sample_submission.csv] [--threads N]
        [--batch-size B] [--workers W] [--models fp32|int8] [--provider auto|cpu|cuda]

Beside it, `manifest.json` says how the run made its submission and `models/` holds its ONNX models (each with its
backbone's normalisation inside: uint8 images in, log-probabilities out). It needs NumPy, Pillow, tqdm and ONNX
Runtime (requirements.txt): no torch, no pickle, nothing of the pipeline.

predict.py is three files of the pipeline, one after the other, so that each step the bundle repeats exists once:
  pipeline/offline/images.py          (this one) how a test image is found, read and resized (the resize cache's rule,
                               JPEG re-encoding included), and the deterministic TTA views; every stage imports it
  pipeline/offline/combine.py  how passes, snapshots, folds, blends, calibration and the submission combine; the
                               stages from TTA on import it
  pipeline/offline/predictor.py  the bundle's own: manifest, checks, ONNX Runtime, the command line; no stage imports
                               it, so an edit there reruns nothing but `package`
"""
from __future__ import annotations

import io
import math
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

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
    centre crop's other symmetries, then the centre of the image zoomed by `max_zoom` and the four corners of that
    zoom, each with every symmetry: the mildest views first. Pass k of n_aug uses view k. fastai v1's TTA was
    deterministic in the same way (four corner crops of a zoom, each flipped); fastai 0.7's drew the training
    augmentations at random, which only torch reproduces."""
    crops = [(1.0, "center")] + ([(max_zoom, "center")] + [(max_zoom, corner) for corner in CORNERS]
                                 if max_zoom > 1 else [])
    return [{"zoom": zoom, "crop": crop, "symmetry": symmetry}
            for zoom, crop in crops for symmetry in SYMMETRIES[augmentation]]


def view(image: Image.Image, size: int, interpolation: str, spec: dict) -> np.ndarray:
    """One TTA view as a (3, size, size) uint8 array: shorter side to size * zoom (torchvision's Resize rule), the
    crop, the symmetry. A corner is the corner of the zoomed centre square, not of the whole image: on a long image
    that would cut away most of what the plain view shows (on the demo, corner views scored 0.50 log loss against the
    plain view's 0.21)."""
    width, height = image.size
    short = int(size * spec["zoom"])
    long = int(short * max(width, height) / min(width, height))
    new_width, new_height = (short, long) if width <= height else (long, short)
    image = image.resize((new_width, new_height), _RESAMPLE[interpolation])
    square_top, square_left = int(round((new_height - short) / 2.0)), int(round((new_width - short) / 2.0))
    near, far = 0, short - size
    top, left = {"center": (int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))),
                 "top_left": (near, near), "top_right": (near, far), "bottom_left": (far, near),
                 "bottom_right": (far, far)}[spec["crop"]]
    if spec["crop"] != "center":
        top, left = square_top + top, square_left + left
    image = image.crop((left, top, left + size, top + size))
    if spec["symmetry"] != "identity":
        image = image.transpose(_TRANSPOSE[spec["symmetry"]])
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
