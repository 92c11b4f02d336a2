"""fastai 0.7's resize rule, one image at a time: the resize stage builds its cache with it, predict resizes a user's
photos with it, so both see an image the same way."""
from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

from pipeline.data import load_rgb, upright_size
from pipeline.io import atomic_path


def resized_size(width: int, height: int, shorter_side: int) -> tuple[int, int]:
    """fastai 0.7: ratio = targ/min(w, h); each side max(floor(side*ratio), targ). 500x375 -> 453x340."""
    ratio = shorter_side / min(width, height)
    return max(math.floor(width * ratio), shorter_side), max(math.floor(height * ratio), shorter_side)


def resize_one(source: Path, destination: Path, shorter_side: int, jpeg_quality: int, draft: bool = True) -> None:
    with Image.open(source) as header:
        target = resized_size(*upright_size(header), shorter_side)  # from the full size, whatever draft decodes
    # A draft whose shorter side is still >= shorter_side has both sides >= the target's.
    image = load_rgb(source, (shorter_side, shorter_side) if draft else None)
    image = image.resize(target, Image.BILINEAR)
    is_jpeg = destination.suffix.lower() in (".jpg", ".jpeg")
    with atomic_path(destination) as tmp:
        if is_jpeg:
            image.save(tmp, format="JPEG", quality=jpeg_quality)
        else:
            image.save(tmp, format=Image.registered_extensions()[destination.suffix.lower()])
