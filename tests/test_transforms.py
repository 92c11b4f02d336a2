"""fastai 0.7's augmentations: which symmetries each kind draws, and what max_zoom does to the crop."""
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.transforms import RandomZoom, train_transform, valid_transform

COLOURS = {(230, 20, 20): "red", (20, 230, 20): "green", (20, 20, 230): "blue", (230, 230, 20): "yellow"}


def quadrants() -> Image.Image:
    """A 32 x 32 image of four coloured quadrants: each of the square's 8 symmetries arranges them differently."""
    image = np.zeros((32, 32, 3), np.uint8)
    for (row, col), colour in zip([(0, 0), (0, 1), (1, 1), (1, 0)], COLOURS):
        image[row * 16:(row + 1) * 16, col * 16:(col + 1) * 16] = colour
    return Image.fromarray(image)


def arrangement(tensor: torch.Tensor) -> tuple[str, ...]:
    """The colours at the centres of the top-left, top-right, bottom-right and bottom-left quadrants."""
    pixels = (tensor * 255).permute(1, 2, 0).numpy()
    names = []
    for y, x in [(8, 8), (8, 24), (24, 24), (24, 8)]:
        nearest = min(COLOURS, key=lambda colour: np.abs(pixels[y, x] - colour).sum())
        names.append(COLOURS[nearest])
    return tuple(names)


def arrangements_drawn(augmentation: str, draws: int = 120) -> set[tuple[str, ...]]:
    transform = train_transform(32, max_zoom=1.0, augmentation=augmentation, normalise=False)
    torch.manual_seed(0)
    return {arrangement(transform(quadrants())) for _ in range(draws)}


@pytest.mark.parametrize("augmentation, symmetries", [
    ("top_down", 8),  # rot90 k times and a flip: satellite and microscope images have no up
    ("side_on", 2),   # a horizontal flip only: photos of things standing on the ground
    ("basic", 1),     # neither: a mirrored digit is not that digit
    ("none", 1),
])
def test_each_augmentation_draws_its_own_symmetries_of_the_square(augmentation, symmetries):
    assert len(arrangements_drawn(augmentation)) == symmetries


def test_without_zoom_or_augmentation_training_sees_what_validation_sees():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    torch.manual_seed(0)
    train = train_transform(32, max_zoom=1.0, augmentation="none")(image)
    torch.testing.assert_close(train, valid_transform(32)(image))


def test_max_zoom_scales_the_shorter_side_up_to_that_factor_on_three_draws_in_four():
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    torch.manual_seed(0)
    sides = [RandomZoom(32, 1.5)(image).shape[-1] for _ in range(400)]
    assert min(sides) == 32 and 46 <= max(sides) <= 48
    assert 0.65 < np.mean([side > 32 for side in sides]) < 0.85  # p = 0.75, as 0.7's RandomScale
    assert {RandomZoom(32, 1.0)(image).shape[-1] for _ in range(20)} == {32}
    zoomed = train_transform(32, max_zoom=1.5, augmentation="none", normalise=False)(quadrants())
    assert zoomed.shape == (3, 32, 32)  # cropped back to the training size after the zoom
