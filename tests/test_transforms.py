"""fastai 0.7's augmentations: which symmetries each kind draws, and what max_zoom does to the crop; and the two
training regularisers beyond 0.7 (timm's auto-augment and random erasing), off unless asked for."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from pipeline.data.transforms import (AUTO_AUGMENTS, DEFAULT_PREPROCESSING, RandomLighting, RandomRotateReflect, RandomZoom,
                                 train_transform, valid_transform)

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


def noise(side: int = 40) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))


def drawn(transform, image: Image.Image, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return transform(image)


def test_by_default_training_and_tta_draw_exactly_the_lesson_augmentations_with_neither_regulariser():
    lesson = v2.Compose([v2.ToImage(), RandomZoom(32, 1.1), RandomRotateReflect(10, p=0.75),
                         v2.RandomHorizontalFlip(0.5), v2.RandomCrop(32), v2.ToDtype(torch.float32, scale=True),
                         RandomLighting(0.05, 0.05),
                         v2.Normalize(DEFAULT_PREPROCESSING["mean"], DEFAULT_PREPROCESSING["std"])])
    default, explicit = train_transform(32), train_transform(32, auto_augment="none", random_erasing=0.0)
    assert [type(step) for step in default.transforms] == [type(step) for step in lesson.transforms]
    assert not {v2.TrivialAugmentWide, v2.RandAugment, v2.RandomErasing} & {type(step) for step in default.transforms}
    for seed in range(3):
        expected = drawn(lesson, noise(), seed)
        torch.testing.assert_close(drawn(default, noise(), seed), expected, rtol=0, atol=0)
        torch.testing.assert_close(drawn(explicit, noise(), seed), expected, rtol=0, atol=0)


@pytest.mark.parametrize("policy", ["trivial_augment", "rand_augment"])
def test_an_auto_augment_policy_changes_the_crop_reproducibly_and_keeps_its_size_and_dtype(policy):
    # No zoom, flip or lighting: under one seed the policy is then the only difference from "none".
    plain = train_transform(32, max_zoom=1.0, augmentation="none", auto_augment="none")
    augmented = train_transform(32, max_zoom=1.0, augmentation="none", auto_augment=policy)
    outputs = [drawn(augmented, noise(), seed) for seed in range(5)]
    assert any(not torch.equal(output, drawn(plain, noise(), seed)) for seed, output in enumerate(outputs))
    assert all(output.shape == (3, 32, 32) and output.dtype == torch.float32 for output in outputs)
    assert all(torch.equal(output, drawn(augmented, noise(), seed)) for seed, output in enumerate(outputs))


@pytest.mark.parametrize("policy", ["trivial_augment", "rand_augment"])
def test_an_auto_augment_policy_trains_a_bicubic_backbone_like_efficientnet_lite0(policy):
    transform = train_transform(32, preprocessing={"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"},
                                auto_augment=policy)
    torch.manual_seed(0)
    # 40 draws: a policy's shear, translate or rotate (bicubic would be refused on tensors) is all but certain.
    assert {transform(noise()).shape for _ in range(40)} == {(3, 32, 32)}


@pytest.mark.parametrize("normalise", [True, False])
def test_random_erasing_overwrites_one_rectangle_of_the_output_and_leaves_the_rest(normalise):
    kept = train_transform(32, normalise=normalise, random_erasing=0.0)
    erased = train_transform(32, normalise=normalise, random_erasing=1.0)
    for seed in range(3):
        before, after = drawn(kept, noise(), seed), drawn(erased, noise(), seed)
        changed = (before != after).any(dim=0)
        assert changed.any() and not changed.all()
        rows, cols = changed.nonzero().unbind(1)
        assert changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one rectangle, filled
        torch.testing.assert_close(drawn(erased, noise(), seed), after, rtol=0, atol=0)


def test_an_unknown_auto_augment_policy_is_refused_naming_the_ones_there_are():
    with pytest.raises(ValueError, match="auto_augment") as error:
        train_transform(32, auto_augment="auto_augment_v0")
    assert all(name in str(error.value) for name in AUTO_AUGMENTS)


@pytest.mark.parametrize("probability", [1.5, -0.1])
def test_a_random_erasing_probability_outside_0_to_1_is_refused(probability):
    with pytest.raises(ValueError, match="random_erasing"):
        train_transform(32, random_erasing=probability)
