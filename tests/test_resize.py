import numpy as np
from PIL import Image

from pipeline.data.dataset import load_rgb
from pipeline.data.resizing import resize_one, resized_size


def test_fastai_resize_rule():
    assert resized_size(500, 375, 340) == (453, 340)
    assert resized_size(375, 500, 340) == (340, 453)
    assert resized_size(340, 340, 340) == (340, 340)
    assert resized_size(100, 50, 340) == (680, 340)  # 0.7 scales small images up too


def test_resize_writes_rgb_with_the_shorter_side_at_target(tmp_path):
    source = tmp_path / "grey.png"
    Image.fromarray(np.full((375, 500), 128, np.uint8), "L").save(source)
    resize_one(source, tmp_path / "out" / "grey.jpg", 340, 90)
    with Image.open(tmp_path / "out" / "grey.jpg") as image:
        assert image.size == (453, 340)
        assert image.mode == "RGB"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["grey.jpg"]  # no temporary file left behind
    assert (tmp_path / "out" / "grey.jpg").stat().st_mode & 0o044  # readable by others, as a plain open() gives


def test_loading_applies_exif_rotation_and_flattens_transparency(tmp_path):
    rotated = Image.new("RGB", (60, 30), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated by 90 degrees
    rotated.save(tmp_path / "rot.jpg", exif=exif)
    assert load_rgb(tmp_path / "rot.jpg").size == (30, 60)
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_rgb(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)


def test_draft_decoding_gives_the_full_decodes_sizes_and_pixels_within_a_few_grey_levels(tmp_path):
    """A 2400 x 1800 JPEG of fine colour texture (detail about 10 px across: 2 px after the resize) resized to 340
    with and without the draft decode. Measured: 3.2 grey levels apart on average, 11 at the 99th percentile; a
    draft decoded too small (1/4 of the target, then upscaled) gives 10 and 35."""
    texture = np.random.default_rng(0).integers(0, 256, (180, 240, 3), dtype=np.uint8)
    Image.fromarray(texture).resize((2400, 1800), Image.BICUBIC).save(tmp_path / "big.jpg", quality=92)
    resize_one(tmp_path / "big.jpg", tmp_path / "draft.jpg", 340, 90, draft=True)
    resize_one(tmp_path / "big.jpg", tmp_path / "full.jpg", 340, 90, draft=False)
    draft, full = (np.asarray(load_rgb(tmp_path / name), dtype=float) for name in ("draft.jpg", "full.jpg"))
    assert draft.shape == full.shape == (340, 453, 3)
    difference = np.abs(draft - full)
    assert 0 < difference.mean() < 5 and np.percentile(difference, 99) < 20
