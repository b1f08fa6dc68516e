"""Label rules of Ultralytics' ``semantic`` (mask PNGs) and ``depth`` (16-bit depth PNGs) tasks.

Every case is also handed to Ultralytics' own verifier (``verify_image_mask`` / ``verify_image_depth``, which drop
a bad image with a warning): a file visionpeft refuses is one Ultralytics would drop, and one it accepts
Ultralytics keeps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionpeft.errors import ConfigError
from visionpeft.tasks.ultralytics.dense import (
    DepthRule,
    MaskRule,
    PolygonSemanticRule,
    SemanticRule,
    check_depth_map,
    check_mask,
    depth_path,
    depth_scale_of,
    depth_summary,
    label_lut,
    mask_path,
)

from ..dense_support import write_depth_dataset, write_mask_dataset

NAMES = ["road", "car", "sky"]


def _ultralytics_mask_ok(image: Path, mask: Path, nc: int, mapping=None) -> bool:
    from ultralytics.data.utils import verify_image_mask

    invalid = np.array(label_lut(nc, mapping), dtype=np.uint8)
    *_, nm, nf, ncorrupt, _ = verify_image_mask((str(image), str(mask), "", invalid))
    return nf == 1 and nm == 0 and ncorrupt == 0


def _ultralytics_depth_ok(image: Path, depth: Path, scale: float = 1000) -> bool:
    from ultralytics.data.utils import verify_image_depth

    _, _, nf, nm, ncorrupt, _ = verify_image_depth((str(image), str(depth), "", scale))
    return nf == 1 and nm == 0 and ncorrupt == 0


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.fixture
def masks(tmp_path):
    data = write_mask_dataset(tmp_path / "sem", NAMES, n_train=2, n_val=1, size=32)
    image = sorted((data.parent / "images" / "train").iterdir())[0]
    return data, image, mask_path(image)


@pytest.fixture
def depth(tmp_path):
    data = write_depth_dataset(tmp_path / "dep", n_train=2, n_val=1, size=32)
    image = sorted((data.parent / "images" / "train").iterdir())[0]
    return data, image, depth_path(image)


def test_written_masks_pass_both_checks(masks):
    data, image, mask = masks
    images = sorted((data.parent / "images" / "train").iterdir())
    rule = SemanticRule.from_data({"masks_dir": "masks", "names": NAMES}, data)
    assert rule == MaskRule("masks", (), str(data))
    assert rule.check_split(images, len(NAMES)) == 2 and rule.trained_names({0: "a"}) == {0: "a"}
    assert mask == data.parent / "masks" / "train" / f"{image.stem}.png"
    assert _ultralytics_mask_ok(image, mask, len(NAMES))


@pytest.mark.parametrize("values, nc, mapping, ok", [
    ([0, 1, 2, 255], 3, None, True),
    ([0, 3], 3, None, False),              # one id past the classes
    ([0, 7], 3, {7: 2}, True),             # label_mapping maps the raw id onto a class
    ([0, 9], 3, {7: 2, 9: "ignore_label"}, True),
    ([0, 7], 3, {7: 5}, False),            # mapped outside the classes
    ([0, 1], 1, None, True),               # binary: background 0, foreground 1
    ([0, 2], 1, None, False),
])
def test_mask_values_must_be_classes_or_ignore(masks, values, nc, mapping, ok):
    _, image, mask = masks
    arr = np.zeros((32, 32), dtype=np.uint8)
    arr[:, 16:] = values[1]
    arr[:4, :4] = values[-1]
    arr[-1, -1] = values[0]
    Image.fromarray(arr).save(mask)
    assert _ultralytics_mask_ok(image, mask, nc, mapping) is ok
    invalid = label_lut(nc, mapping)
    if ok:
        check_mask(mask, image, invalid, nc)
        return
    with pytest.raises(ConfigError) as exc:
        check_mask(mask, image, invalid, nc)
    text = _one_line(exc)
    assert str(mask) in text and "outside the classes" in text and f"0..{max(nc - 1, 1)}" in text


def test_a_16_bit_mask_with_ids_past_255_is_refused(masks):
    _, image, mask = masks
    Image.fromarray(np.full((32, 32), 300, dtype=np.uint16)).save(mask)
    assert not _ultralytics_mask_ok(image, mask, 3)
    with pytest.raises(ConfigError, match=r"mask values \[300\]"):
        check_mask(mask, image, label_lut(3), 3)


def test_mask_of_another_size_missing_or_in_colour_is_refused(masks):
    _, image, mask = masks
    Image.fromarray(np.zeros((16, 32), dtype=np.uint8)).save(mask)
    assert not _ultralytics_mask_ok(image, mask, 3)
    with pytest.raises(ConfigError) as exc:
        check_mask(mask, image, label_lut(3), 3)
    assert "mask size 32x16 differs" in _one_line(exc)
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(mask)
    with pytest.raises(ConfigError) as exc:
        check_mask(mask, image, label_lut(3), 3)
    assert "mode 'RGB'" in _one_line(exc)
    mask.unlink()
    assert not _ultralytics_mask_ok(image, mask, 3)
    with pytest.raises(ConfigError) as exc:
        check_mask(mask, image, label_lut(3), 3)
    assert f"no semantic mask {mask}" in _one_line(exc)


def test_bad_label_mapping_and_masks_dir_are_refused(masks):
    data, image, _ = masks
    with pytest.raises(ConfigError, match="label_mapping"):
        label_lut(3, [1, 2], data)
    with pytest.raises(ConfigError, match="label_mapping"):
        label_lut(3, {"a": 1}, data)
    with pytest.raises(ConfigError, match="masks_dir"):
        SemanticRule.from_data({"masks_dir": "a/b"}, data)
    with pytest.raises(ConfigError, match="label_mapping"):
        SemanticRule.from_data({"masks_dir": "masks", "label_mapping": [1]}, data)


def test_polygon_semantic_data_gets_ultralytics_background_class():
    """Without masks_dir the labels are polygons (checked as segment labels) and the trainer adds 'background'
    when the yaml names more than one class (Ultralytics' add_polygon_background)."""
    rule = SemanticRule.from_data({"names": NAMES}, Path("d.yaml"))
    assert isinstance(rule, PolygonSemanticRule) and rule.fields_ok(5) and rule.fields_ok(7)
    assert rule.trained_names(dict(enumerate(NAMES))) == {0: "road", 1: "car", 2: "sky", 3: "background"}
    assert rule.trained_names({0: "thing"}) == {0: "thing"}  # binary: background 0, foreground 1


def test_written_depth_maps_pass_both_checks(depth):
    data, image, dmap = depth
    assert dmap == data.parent / "depth" / "train" / f"{image.stem}.png"
    with Image.open(dmap) as im:
        assert im.mode in ("I;16", "I") and im.size == (32, 32)
    images = sorted((data.parent / "images" / "train").iterdir())
    rule = DepthRule.from_data({"depth_scale": 250}, data)
    assert rule.depth_scale == 250 and rule.check_split(images, 1) == 2
    assert _ultralytics_depth_ok(image, dmap)


def test_an_8_bit_depth_map_is_refused(depth):
    _, image, dmap = depth
    Image.fromarray(np.full((32, 32), 7, dtype=np.uint8)).save(dmap)
    assert not _ultralytics_depth_ok(image, dmap)
    with pytest.raises(ConfigError) as exc:
        check_depth_map(dmap, image)
    assert "mode 'L'" in _one_line(exc) and "16-bit PNG" in str(exc.value)


def test_a_depth_map_of_another_shape_is_refused_a_smaller_one_of_the_same_shape_is_not(depth):
    _, image, dmap = depth
    Image.fromarray(np.full((16, 32), 900, dtype=np.uint16)).save(dmap)
    assert not _ultralytics_depth_ok(image, dmap)
    with pytest.raises(ConfigError) as exc:
        check_depth_map(dmap, image)
    assert "depth map size 32x16 does not match" in _one_line(exc)
    Image.fromarray(np.full((16, 16), 900, dtype=np.uint16)).save(dmap)  # Ultralytics resizes it to the image
    assert _ultralytics_depth_ok(image, dmap)
    check_depth_map(dmap, image)


def test_a_missing_depth_map_is_refused_a_float_npy_is_taken(depth):
    _, image, dmap = depth
    dmap.unlink()
    assert depth_path(image).suffix == ".npy"
    assert not _ultralytics_depth_ok(image, depth_path(image))
    with pytest.raises(ConfigError) as exc:
        check_depth_map(depth_path(image), image)
    assert f"no depth map {dmap}" in _one_line(exc)
    np.save(dmap.with_suffix(".npy"), np.ones((32, 32), dtype=np.float32))
    assert _ultralytics_depth_ok(image, depth_path(image))
    check_depth_map(depth_path(image), image)
    np.save(dmap.with_suffix(".npy"), np.ones((32, 32), dtype=np.int32))
    assert not _ultralytics_depth_ok(image, depth_path(image))
    with pytest.raises(ConfigError, match="2-D float"):
        check_depth_map(depth_path(image), image)


@pytest.mark.parametrize("value", [0, -5, "mm", True, float("nan")])
def test_depth_scale_must_be_a_positive_number(value):
    with pytest.raises(ConfigError) as exc:
        depth_scale_of({"depth_scale": value}, Path("d.yaml"))
    assert "d.yaml: depth_scale" in _one_line(exc)


def test_depth_scale_defaults_to_ultralytics(tmp_path):
    assert depth_scale_of({}, Path("d.yaml")) == 1000


def test_depth_summary_reads_the_valid_pixels():
    arr = np.array([[0.0, 1.5], [2.5, 4.0]], dtype=np.float32)
    assert depth_summary(arr) == [{"height": 2, "width": 2, "min_m": 1.5, "max_m": 4.0, "median_m": 2.5}]
    assert depth_summary(np.zeros((3, 4))) == [{"height": 3, "width": 4}]


def test_check_data_applies_the_rows_rules_and_skipped_image_yamls_keep_the_tasks_keys(tmp_path):
    """``check_data`` counts one label map per image, names the classes the trainer gives the model, and the yaml
    written without unreadable images keeps the task's keys (depth_scale; semantic's own names)."""
    import yaml

    from visionpeft.tasks.ultralytics.data import check_data, write_without_skipped

    from ..ultralytics_support import make_dataset

    data = write_depth_dataset(tmp_path / "dep", n_train=3, n_val=1, size=32)
    sorted((data.parent / "images" / "train").iterdir())[0].write_bytes(b"")  # unreadable: skipped
    info = check_data(data, task="depth", check_images=True, skip_bad_images=True)
    assert info.boxes == {"train": 2, "val": 1} and len(info.skipped["train"]) == 1
    written = yaml.safe_load(write_without_skipped(info, tmp_path / "out").read_text())
    assert written["depth_scale"] == 1000 and written["names"] == {0: "depth"}
    poly = ["0 0.1 0.1 0.6 0.1 0.6 0.6", "1 0.2 0.7 0.9 0.7 0.5 0.9"]
    data = make_dataset(tmp_path / "sem", {"train/a": poly, "val/b": poly[:1]}, ["road", "car"])
    info = check_data(data, task="semantic")
    assert info.names == {0: "road", 1: "car", 2: "background"} and info.boxes == {"train": 2, "val": 1}
    written = yaml.safe_load(write_without_skipped(info, tmp_path / "out2").read_text())
    assert written["names"] == ["road", "car"]  # Ultralytics adds the background class itself


def test_a_mask_under_another_image_suffix_is_found_as_ultralytics_finds_it(masks):
    _, image, mask = masks
    mask.rename(mask.with_suffix(".bmp"))
    assert mask_path(image) == mask.with_suffix(".bmp")
    assert _ultralytics_mask_ok(image, mask, 3)  # Ultralytics tries the other suffixes itself
    check_mask(mask_path(image), image, label_lut(3), 3)
