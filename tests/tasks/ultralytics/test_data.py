"""Data yaml and label checks: every problem names the file (and line) before Ultralytics runs."""

from __future__ import annotations

import pytest

from visionpeft.errors import ConfigError
from visionpeft.tasks.ultralytics.data import check_data, label_path

from ..ultralytics_support import copy_dataset, make_dataset

GOOD = {"train/a": ["0 0.5 0.5 0.2 0.2", "1 0.1 0.1 0.05 0.05"], "val/b": ["1 0.5 0.5 0.3 0.3"]}


def test_valid_dataset(tmp_path):
    data = make_dataset(tmp_path, GOOD, ["cat", "dog"])
    info = check_data(data)
    assert info.nc == 2 and info.names == {0: "cat", 1: "dog"}
    assert [p.name for p in info.splits["train"]] == ["a.jpg"]
    assert info.boxes == {"train": 2, "val": 1}


def test_label_path_follows_ultralytics(tmp_path):
    assert label_path(tmp_path / "images" / "train" / "x.jpg") == tmp_path / "labels" / "train" / "x.txt"


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("0 0.5 0.5 0.2", "malformed label line"),
        ("0 0.5 0.5 0.2 zero", "every field must be a number"),
        ("2 0.5 0.5 0.2 0.2", "class id 2 out of range: the data yaml has 2 classes"),
        ("-1 0.5 0.5 0.2 0.2", "class id -1 out of range"),
        ("0.5 0.5 0.5 0.2 0.2", "class id 0.5 out of range"),
        ("0 0.5 1.5 0.2 0.2", "not normalised"),
    ],
)
def test_bad_label_lines_name_file_and_line(tmp_path, line, match):
    labels = {**GOOD, "train/c": ["0 0.5 0.5 0.1 0.1", "", line]}
    data = make_dataset(tmp_path, labels, ["cat", "dog"])
    with pytest.raises(ConfigError, match=match) as err:
        check_data(data)
    assert f"{tmp_path / 'labels' / 'train' / 'c.txt'}:3" in str(err.value)


def test_missing_split_folder(tmp_path):
    data = make_dataset(tmp_path, GOOD, ["cat", "dog"], yaml_extra="test: images/test\n")
    with pytest.raises(ConfigError, match=r"test: 'images/test' -> .* does not exist"):
        check_data(data)
    data.write_text("train: images/train\nnames: [cat, dog]\n")
    with pytest.raises(ConfigError, match="missing 'val:'"):
        check_data(data)


def test_no_labels_at_all(tmp_path):
    data = make_dataset(tmp_path, GOOD, ["cat", "dog"])
    (tmp_path / "labels" / "train" / "a.txt").unlink()
    with pytest.raises(ConfigError, match=r"train: no labels found for 1 images .*labels/train/a\.txt"):
        check_data(data)


def test_bad_yaml_contents(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        check_data(tmp_path / "nope.yaml")
    data = make_dataset(tmp_path, GOOD, ["cat", "dog"], yaml_extra="nc: 3\n")
    with pytest.raises(ConfigError, match="nc: 3 but 'names' lists 2"):
        check_data(data)
    data.write_text("train: images/train\nval: images/val\n")
    with pytest.raises(ConfigError, match="needs 'names'"):
        check_data(data)
    data.write_text("train: images/train\nval: images/val\nnames: [a, b]\npath: no/such/dir\n")
    with pytest.raises(ConfigError, match="path: 'no/such/dir' is not a folder"):
        check_data(data)


def test_shared_datasets(shared, tmp_path):
    info = check_data(copy_dataset(shared, "bccd_yolo", tmp_path))
    assert info.nc == 3 and len(info.splits["train"]) == 205 and info.boxes["train"] == 2804
    assert set(info.splits) == {"train", "val", "test"}
    assert check_data(copy_dataset(shared, "coco8", tmp_path)).boxes == {"train": 13, "val": 17}
