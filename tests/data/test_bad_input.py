"""Bad classification data: every PIL mode decoded with its real values, bombs and broken files named,
empty and single-class splits refused."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionpeft.data import DataError, ImageDataset, list_splits, load_descriptor, read_image
from visionpeft.data.image import ImageError
from visionpeft.data.toy import make_toy_imagefolder

RNG = np.random.default_rng(0)
GREY8 = RNG.integers(0, 256, size=(6, 5), dtype=np.uint8)
RGB8 = RNG.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, size=(6, 5), dtype=np.uint16)


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=2)


def _scale16(values: np.ndarray) -> np.ndarray:
    # Reference in float64: v * 255 / 65535, rounded to nearest.
    return _grey(np.floor(values.astype(np.float64) * 255.0 / 65535.0 + 0.5).astype(np.uint8))


def _cases() -> dict[str, tuple[Image.Image, np.ndarray]]:
    """file name -> (image to save, expected RGB uint8 array after reading it back)."""
    binary = GREY8 > 127
    palette = Image.fromarray(RGB8).quantize(colors=16)
    cmyk = Image.fromarray(RGB8).convert("CMYK")
    return {
        "one.png": (Image.fromarray(binary), _grey(np.where(binary, 255, 0).astype(np.uint8))),
        "L.png": (Image.fromarray(GREY8), _grey(GREY8)),
        "LA.png": (Image.fromarray(np.dstack([GREY8, GREY8[::-1]]), mode="LA"), _grey(GREY8)),
        "P.png": (palette, np.asarray(palette.convert("RGB"))),
        "RGBA.png": (Image.fromarray(np.dstack([RGB8, GREY8]), mode="RGBA"), RGB8),
        "I16.png": (Image.fromarray(GREY16), _scale16(GREY16)),
        "I16.tif": (Image.fromarray(GREY16), _scale16(GREY16)),
        "I.tif": (Image.fromarray(GREY16.astype(np.int32), mode="I"), _scale16(GREY16)),
        "F01.tif": (Image.fromarray(GREY8.astype(np.float32) / 255, mode="F"), _grey(GREY8)),
        "F255.tif": (Image.fromarray(GREY8.astype(np.float32), mode="F"), _grey(GREY8)),
        "CMYK.tif": (cmyk, np.asarray(cmyk.convert("RGB"))),
    }


MODES = {"one.png": "1", "L.png": "L", "LA.png": "LA", "P.png": "P", "RGBA.png": "RGBA", "I16.png": "I;16",
         "I16.tif": "I;16", "I.tif": "I", "F01.tif": "F", "F255.tif": "F", "CMYK.tif": "CMYK"}


@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_keeps_its_values(tmp_path, name):
    image, expected = _cases()[name]
    path = tmp_path / name
    image.save(path)
    with Image.open(path) as back:
        mode = back.mode
    assert mode == MODES[name]  # the file really is in the mode under test
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (6, 5, 3), mode
    np.testing.assert_array_equal(out, expected)


def test_sixteen_bit_is_not_binarised(tmp_path):
    """The reported bug: PIL's convert('RGB') clips 16-bit values at 255 (almost every pixel white)."""
    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)  # 0..65535 in 256 steps
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    out = read_image(tmp_path / "ramp.png")[..., 0]
    assert len(np.unique(out)) == 256
    np.testing.assert_array_equal(out.reshape(-1), np.arange(256))


@pytest.mark.parametrize(
    ("array", "mode", "message"),
    [
        (np.full((4, 4), -5, np.int32), "I", "32-bit integer image with values -5..-5, outside 0..65535"),
        (np.full((4, 4), 70000, np.int32), "I", "values 70000..70000"),
        (np.full((4, 4), 300.0, np.float32), "F", "floating-point image with values 300..300"),
        (np.full((4, 4), -0.5, np.float32), "F", "values -0.5..-0.5"),
        (np.full((4, 4), np.nan, np.float32), "F", "NaN or infinite"),
    ],
)
def test_modes_without_a_faithful_8bit_form_are_refused_by_name(tmp_path, array, mode, message):
    path = tmp_path / "odd.tif"
    Image.fromarray(array, mode=mode).save(path)
    with pytest.raises(ImageError, match=message) as err:
        read_image(path)
    assert str(path) in str(err.value) and "dataset.skip_bad_images" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 20, b"not an image at all"])
def test_empty_or_broken_files_name_the_file(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match="bad.png: cannot read this image"):
        read_image(path)


def test_truncated_jpeg_names_the_file(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:-400])
    with pytest.raises(ImageError, match="cut.jpg: cannot read this image"):
        read_image(path)


@pytest.fixture
def bomb(tmp_path, monkeypatch) -> Path:
    """A PNG over the decompression-bomb limit (the limit is lowered: the real case is 20000 x 20000)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "huge.png"
    Image.new("RGB", (50, 50)).save(path)  # 2500 px > 2 * 1000: PIL's DecompressionBombError
    return path


def test_decompression_bomb_is_named_and_skippable(bomb, tmp_path):
    with pytest.raises(ImageError, match="huge.png: image too large to decode safely") as err:
        read_image(bomb)
    assert "MAX_IMAGE_PIXELS" in str(err.value)
    ok = tmp_path / "ok.png"
    Image.new("RGB", (8, 8)).save(ok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ImageDataset([(bomb, 0), (ok, 1)], None, skip_bad_images=True, split="train")
    assert ds.skipped == [bomb] and len(ds) == 1


def test_single_class_dataset_is_refused(tmp_path):
    root = make_toy_imagefolder(tmp_path / "one", classes=1, train_per_class=4, val_per_class=2, size=8)
    info = load_descriptor(root)
    with pytest.raises(DataError, match=r"split 'train' has 1 class \['class_0'\]; classification needs at least 2"):
        list_splits(info, {"train": "train", "val": "val"})


def test_csv_split_with_only_a_header_is_an_empty_split(tmp_path):
    root = make_toy_imagefolder(tmp_path / "toy", classes=2, train_per_class=2, val_per_class=1, size=8)
    train = tmp_path / "train.csv"
    train.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in sorted(root.rglob("train/*/*.png"))))
    val = tmp_path / "val.csv"
    val.write_text("path,label\n")
    desc = tmp_path / "d.yaml"
    desc.write_text(f"format: csv\npath: {tmp_path}\ntrain: train.csv\nval: val.csv\n")
    with pytest.raises(DataError, match=f"empty split in {val}: split 'val' has a header but no"):
        list_splits(load_descriptor(desc), {"train": "train", "val": "val"})
