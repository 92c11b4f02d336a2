"""fastai 0.7's resize rule, one image at a time: the resize stage builds its cache with it, predict resizes a user's
photos with it, and the bundle (pipeline.offline.images, where the rule lives) resizes the test images in memory with it, so
all see an image the same way."""
from __future__ import annotations

from pathlib import Path

from pipeline.io import atomic_path
from pipeline.offline.images import resized, resized_size, save_like_cache  # noqa: F401


def resize_one(source: Path, destination: Path, shorter_side: int, jpeg_quality: int, draft: bool = True) -> None:
    image = resized(source, shorter_side, draft)
    with atomic_path(destination) as tmp:
        save_like_cache(image, tmp, destination.suffix, jpeg_quality)
