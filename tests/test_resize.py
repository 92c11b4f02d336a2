import numpy as np
from PIL import Image

from pipeline.data import load_rgb
from pipeline.resize import resize_one, resized_size


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
