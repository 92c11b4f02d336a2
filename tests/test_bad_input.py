"""The corpus of nasty inputs: each case is generated here and its exact behaviour asserted.

Policy: decodable-but-odd images just work (upright 8-bit RGB everywhere); undecodable ones stop the first stage that
reads them with the full list (default) or are left out and listed (`on_bad_image: skip`); bad labels and layouts
are errors naming the file or row; test images are never dropped silently.
"""
import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data.dataset import DataError, inspect_image, load_rgb, read_labels_csv, read_test
from pipeline.data.resizing import resize_one
from pipeline.stages import image_stats, resize, split
from pipeline.stages.tta import class_prior, with_prior_for_unusable
from pipeline.data.transforms import valid_transform


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def red_square(mode="RGB", size=(40, 30)):
    return Image.new("RGB", size, (220, 20, 20)).convert(mode)


# ---- images that cannot be decoded: listed with their error --------------------------------------------------

@pytest.mark.parametrize("name, content, error", [
    ("truncated.jpg", jpeg_bytes(red_square(size=(400, 300)))[:1500], "truncated"),
    ("empty.jpg", b"", "cannot identify image file"),
    ("text.jpg", b"id,breed\nthis is not an image\n", "cannot identify image file"),
])
def test_undecodable_files_raise_on_inspection(tmp_path, name, content, error):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(Exception, match=error):
        inspect_image(tmp_path / name)


def test_an_image_over_the_pixel_limit_is_refused_as_a_decompression_bomb(tmp_path):
    red_square(size=(200, 200)).save(tmp_path / "bomb.png")
    assert inspect_image(tmp_path / "bomb.png")[:2] == (200, 200)
    with pytest.raises(Exception, match="DecompressionBomb|decompression bomb|exceeds limit"):
        inspect_image(tmp_path / "bomb.png", max_pixels=10_000)


@pytest.fixture
def data_with_bad_images(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    rows = []
    for index in range(6):
        red_square().save(tmp_path / "train" / f"ok{index}.jpg")
        rows.append((f"ok{index}", "a" if index % 2 else "b"))
    (tmp_path / "train" / "trunc.jpg").write_bytes(jpeg_bytes(red_square(size=(400, 300)))[:1500])
    (tmp_path / "train" / "empty.jpg").write_bytes(b"")
    rows += [("trunc", "a"), ("empty", "b")]
    pd.DataFrame(rows, columns=["id", "breed"]).to_csv(tmp_path / "labels.csv", index=False)
    red_square().save(tmp_path / "test" / "t1.jpg")
    (tmp_path / "test" / "t2.jpg").write_text("not an image")
    return tmp_path


def run_image_stats(data_dir, out, params: str) -> None:
    """The image-stats stage as its rule runs it, writing into `out` (bad images: out/bad.csv)."""
    image_stats.main(["--data-dir", str(data_dir), "--sizes-csv", str(out / "s.csv"), "--summary", str(out / "s.json"),
                 "--plot-all", str(out / "a.png"), "--plot-small", str(out / "b.png"), "--bad-images",
                 str(out / "bad.csv"), "--threads", "1", "--params", params])


def run_split(data_dir, out, params: str, bad_images: bool = True) -> None:
    """The split stage as its rule runs it, writing out/split.csv, out/test.csv and out/cc.csv."""
    listed = ["--bad-images", str(out / "bad.csv")] if bad_images else []
    split.main(["--data-dir", str(data_dir), *listed, "--split-csv", str(out / "split.csv"), "--test-csv",
                str(out / "test.csv"), "--class-counts", str(out / "cc.csv"), "--params", params])


def test_by_default_the_stats_stage_fails_listing_every_bad_file(data_with_bad_images, capsys):
    out = data_with_bad_images / "out"
    with pytest.raises(SystemExit):
        run_image_stats(data_with_bad_images, out, '{"layout": "csv"}')
    message = capsys.readouterr().err
    assert "3 images cannot be read" in message
    for path in ("train/trunc.jpg", "train/empty.jpg", "test/t2.jpg"):
        assert path in message
    assert not (out / "s.csv").exists()


def test_with_skip_bad_images_are_listed_left_out_of_the_split_and_kept_in_test(data_with_bad_images, capsys):
    out = data_with_bad_images / "out"
    run_image_stats(data_with_bad_images, out, '{"layout": "csv", "on_bad_image": "skip"}')
    bad = pd.read_csv(out / "bad.csv")
    assert sorted(bad["path"]) == ["test/t2.jpg", "train/empty.jpg", "train/trunc.jpg"]
    assert "skipping 3 unreadable images" in capsys.readouterr().out
    assert len(pd.read_csv(out / "s.csv")) == 7
    run_split(data_with_bad_images, out, '{"layout": "csv", "val_pct": 0.34}')
    assert sorted(pd.read_csv(out / "split.csv")["id"]) == [f"ok{i}" for i in range(6)]
    test = pd.read_csv(out / "test.csv")
    assert test.set_index("id")["usable"].to_dict() == {"t1": True, "t2": False}


def test_an_unreadable_test_image_gets_the_training_class_prior():
    prior = class_prior(pd.DataFrame({"y": [0, 0, 0, 1]}), 2)
    probs = with_prior_for_unusable(np.array([[0.1, 0.9]]), np.array([False, True]), prior, ["test/t2.jpg"])
    np.testing.assert_allclose(probs, [[0.75, 0.25], [0.1, 0.9]])


def test_an_image_over_max_pixels_stops_the_stats_stage_or_is_left_out_of_every_later_stage(tmp_path, capsys):
    write_labels(tmp_path, "id,breed\n" + "".join(f"ok{i},{'ab'[i % 2]}\n" for i in range(4)) + "huge,a\n",
                 images=[f"ok{i}" for i in range(4)])
    red_square(size=(300, 300)).save(tmp_path / "train" / "huge.jpg", format="PNG")  # 90,000 pixels
    (tmp_path / "test").mkdir()
    red_square().save(tmp_path / "test" / "t.jpg")
    out = tmp_path / "out"

    def stats(policy):
        run_image_stats(tmp_path, out, f'{{"layout": "csv", "max_pixels": 50000, "on_bad_image": "{policy}"}}')

    with pytest.raises(SystemExit):
        stats("error")
    assert re.search(r"1 images cannot be read.*\n.*train/huge.jpg: DecompressionBomb", capsys.readouterr().err)
    stats("skip")
    assert pd.read_csv(out / "bad.csv")["path"].tolist() == ["train/huge.jpg"]
    run_split(tmp_path, out, '{"layout": "csv", "val_pct": 0.5, "cv_idx": 0, "seed": 1}')
    assert "huge" not in pd.read_csv(out / "split.csv")["id"].tolist()
    resize.main(["--data-dir", str(tmp_path), "--bad-images", str(out / "bad.csv"), "--out-dir", str(out / "r"),
                 "--threads", "1", "--params", '{"layout": "csv", "shorter_side": 20}'])
    assert sorted(p.name for p in (out / "r" / "train").iterdir()) == [f"ok{i}.jpg" for i in range(4)]


# ---- decodable but odd images: converted to upright 8-bit RGB, consistently -----------------------------------

def test_png_saved_as_jpg_just_works(tmp_path):
    red_square().save(tmp_path / "png.jpg", format="PNG")
    assert load_rgb(tmp_path / "png.jpg").getpixel((0, 0)) == (220, 20, 20)
    assert inspect_image(tmp_path / "png.jpg") == (40, 30, "RGB")


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    (tmp_path / "cmyk.jpg").write_bytes(jpeg_bytes(red_square("CMYK"), quality=95))
    assert inspect_image(tmp_path / "cmyk.jpg")[2] == "CMYK"
    red, green, blue = load_rgb(tmp_path / "cmyk.jpg").getpixel((20, 15))
    assert red > 180 and green < 70 and blue < 70


def test_greyscale_becomes_three_equal_channels(tmp_path):
    Image.new("L", (10, 10), 77).save(tmp_path / "grey.jpg")
    assert load_rgb(tmp_path / "grey.jpg").getpixel((5, 5)) == (77, 77, 77)


def test_rgba_and_palette_transparency_become_white(tmp_path):
    rgba = Image.new("RGBA", (10, 10), (200, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.save(tmp_path / "rgba.png")
    palette = Image.new("P", (10, 10), 1)
    palette.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png", transparency=0)
    for name in ("rgba.png", "palette.png"):
        image = load_rgb(tmp_path / name)
        assert image.mode == "RGB"
        assert image.getpixel((0, 0)) == (255, 255, 255)
        assert image.getpixel((5, 5)) == (200, 0, 0)


def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "deep.png")
    assert load_rgb(tmp_path / "deep.png").getpixel((0, 0)) == (128, 128, 128)


def test_exif_rotated_jpeg_is_upright_in_every_stage(tmp_path):
    stored = Image.new("RGB", (60, 30), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 30))  # red band on the stored image's left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise: the band ends up on top
    stored.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    assert inspect_image(tmp_path / "rot.jpg")[:2] == (30, 60)
    upright = load_rgb(tmp_path / "rot.jpg")
    assert upright.size == (30, 60)
    assert upright.getpixel((15, 2))[0] > 200 and upright.getpixel((15, 50))[2] > 200
    resize_one(tmp_path / "rot.jpg", tmp_path / "r" / "rot.jpg", 40, 95)
    assert Image.open(tmp_path / "r" / "rot.jpg").size == (40, 80)


def test_a_one_pixel_image_resizes_and_transforms(tmp_path):
    Image.new("RGB", (1, 1), (9, 9, 9)).save(tmp_path / "dot.png")
    resize_one(tmp_path / "dot.png", tmp_path / "r" / "dot.png", 34, 90)
    assert Image.open(tmp_path / "r" / "dot.png").size == (34, 34)
    assert valid_transform(24)(load_rgb(tmp_path / "r" / "dot.png")).shape == (3, 24, 24)


# ---- labels and layout ------------------------------------------------------------------------------------------

def write_labels(folder, text, images=("a", "b")):
    (folder / "train").mkdir(exist_ok=True)
    for name in images:
        red_square().save(folder / "train" / f"{name}.jpg")
    (folder / "labels.csv").write_bytes(text.encode() if isinstance(text, str) else text)


@pytest.mark.parametrize("text, message", [
    ("id,breed\na,x\nb,x\nc,y\n", r"missing .*train/c\.jpg"),
    ("id,breed\na,x\na,y\n", "duplicate ids a"),
    ("id,breed\na,x\nb/../a,y\n", "line 3: id 'b/../a' contains a path separator"),
    ("id,breed\na,x\nb\\c,y\n", "line 3: id 'b\\\\\\\\c' contains a path separator"),
    ("id,breed\na,x\n..,y\n", r"line 3: id '\.\.' contains a path separator or '\.\.'"),
    ("id,breed\na,x\nC:evil,y\n", "line 3: id 'C:evil' is an absolute path"),
    ("id,breed\na,x\nb,\n", "line 3: empty label for id 'b'"),
    ("id,breed\na,x\nb,   \n", "line 3: empty label for id 'b'"),
    ("id,breed\na,x\nb,NaN\n", "line 3: the label 'NaN' of id 'b' reads as a missing value"),
    ("id\na\nb\n", "needs at least two columns"),
])
def test_bad_labels_are_errors_naming_the_row(tmp_path, text, message):
    write_labels(tmp_path, text)
    with pytest.raises(DataError, match=message):
        read_labels_csv(tmp_path)


def test_bom_crlf_and_extra_columns_read_cleanly(tmp_path):
    write_labels(tmp_path, b"\xef\xbb\xbfid,breed,notes\r\na,x,first\r\nb,y,second\r\n")
    table = read_labels_csv(tmp_path)
    assert table[["id", "label"]].values.tolist() == [["a", "x"], ["b", "y"]]


def test_an_image_without_a_label_is_a_logged_skip(tmp_path, capsys):
    write_labels(tmp_path, "id,breed\na,x\nb,y\n", images=("a", "b", "stray"))
    (tmp_path / "test").mkdir()
    red_square().save(tmp_path / "test" / "t.jpg")
    run_split(tmp_path, tmp_path, '{"layout": "csv", "val_pct": 0.5}', bad_images=False)
    assert "skipping 1 images in train/ without a row in labels.csv: train/stray.jpg" in capsys.readouterr().out
    assert "stray" not in pd.read_csv(tmp_path / "split.csv")["id"].tolist()


def test_a_class_left_without_training_images_is_an_error(tmp_path, capsys):
    write_labels(tmp_path, "id,breed\na,x\nb,y\n")
    (tmp_path / "test").mkdir()
    red_square().save(tmp_path / "test" / "t.jpg")
    with pytest.raises(SystemExit):
        run_split(tmp_path, tmp_path, '{"layout": "csv", "val_pct": 0.5, "cv_idx": 0, "seed": 0}', bad_images=False)
    assert "classes with no training image after the split" in capsys.readouterr().err


def test_an_empty_test_folder_is_an_error(tmp_path):
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match="no test images found"):
        read_test(tmp_path)


def re_encode(path, mode):
    """Rewrite an RGB image under the same name as CMYK JPEG, 16-bit greyscale PNG or palette PNG; return what an
    upright 8-bit RGB decoder should see (the grey version for 16-bit)."""
    rgb = load_rgb(path)
    if mode == "CMYK":
        rgb.convert("CMYK").save(path, format="JPEG", quality=95)
        return rgb
    if mode == "I;16":
        grey = rgb.convert("L")
        Image.fromarray(np.asarray(grey, np.uint16) * 257).save(path, format="PNG")
        return grey.convert("RGB")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(path, format="PNG")
    return rgb


def mean_difference(cached, expected):
    expected = expected.resize(cached.size, Image.BILINEAR)
    return float(np.abs(np.asarray(cached, np.float32) - np.asarray(expected, np.float32)).mean())


@pytest.mark.workflow
def test_skip_policy_and_odd_encodings_end_to_end_keep_every_test_id(tmp_path):
    """Through every stage that decodes: truncated and non-image files are skipped and listed (test ids keep a row
    with the class prior); CMYK, 16-bit and palette images are read as the RGB images they are."""
    from conftest import CONFIGS, REPO, build_user_data, recipe_for_user_data, snakemake

    # The micro recipe's images as a user's own data (built here, not by a Snakemake run of the demo builder), broken
    # and re-encoded in place before the one run.
    data = build_user_data(tmp_path / "data", CONFIGS / "micro_csv.yaml")
    override = tmp_path / "skip.yaml"
    # No fine-tuning: the head's augmented fits already decode through the training loaders.
    override.write_text("images: {shorter_side: 40, on_bad_image: skip}\nfinetune: []\n")
    configs = [recipe_for_user_data(CONFIGS / "micro_csv.yaml", tmp_path / "recipe.yaml", data), override]
    work = tmp_path / "work"
    train_images = sorted((data / "train").glob("*.jpg"))
    bad_train, bad_test = train_images[0], sorted((data / "test").glob("*.jpg"))[0]
    bad_train.write_bytes(bad_train.read_bytes()[:300])  # truncated
    bad_test.write_text("not an image")
    odd = {mode: (path, re_encode(path, mode)) for mode, path in zip(["CMYK", "I;16", "P"], train_images[1:4])}
    odd_test = sorted((data / "test").glob("*.jpg"))[1]
    re_encode(odd_test, "CMYK")
    result = snakemake(REPO, work, "out/submission.csv", configfiles=configs)  # all but the augmentation preview
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = work / "out"
    assert sorted(pd.read_csv(out / "stats" / "bad_images.csv")["path"]) == [f"test/{bad_test.name}",
                                                                              f"train/{bad_train.name}"]
    split_ids = pd.read_csv(out / "split.csv", dtype=str)["id"].tolist()
    assert bad_train.stem not in split_ids
    modes = pd.read_csv(out / "stats" / "sizes.csv", dtype=str).set_index("id")["mode"]
    for mode, (path, expected) in odd.items():
        assert modes[path.stem] == mode and path.stem in split_ids
        cached = Image.open(out / "resized" / "40" / "train" / path.name)
        assert cached.mode == "RGB"
        assert mean_difference(cached, expected) < 10, mode
    test_table = pd.read_csv(out / "test.csv", dtype={"id": str}).set_index("id")
    assert test_table.loc[odd_test.stem, "usable"] and not test_table.loc[bad_test.stem, "usable"]
    submission = pd.read_csv(out / "submission.csv", dtype={"id": str}).set_index("id")
    assert sorted(submission.index) == sorted(p.stem for p in (data / "test").glob("*.jpg"))
    counts = pd.read_csv(out / "class_counts.csv").set_index("label")["n_train"]
    np.testing.assert_allclose(submission.loc[bad_test.stem, counts.index], counts / counts.sum(), atol=1e-6)
    assert "unreadable test images get the training class prior" in (out / "logs" / "tta.log").read_text()


def test_the_split_stage_takes_a_label_reading_nan_as_a_class_only_when_the_sample_submission_names_it(tmp_path,
                                                                                                     capsys):
    write_labels(tmp_path, "id,breed\na,x\nb,NaN\nc,NaN\nd,x\n", images="abcd")
    (tmp_path / "test").mkdir()
    red_square().save(tmp_path / "test" / "t.jpg")
    with pytest.raises(SystemExit):
        run_split(tmp_path, tmp_path, '{"layout": "csv", "val_pct": 0.5}', bad_images=False)
    assert "labels.csv line 3: the label 'NaN' of id 'b' reads as a missing value" in capsys.readouterr().err
    (tmp_path / "sample_submission.csv").write_text("id,NaN,x\nt,0.5,0.5\n")
    run_split(tmp_path, tmp_path, '{"layout": "csv", "val_pct": 0.5}', bad_images=False)
    split_csv = pd.read_csv(tmp_path / "split.csv", dtype=str, keep_default_na=False)
    assert sorted(split_csv["label"]) == ["NaN", "NaN", "x", "x"]
