"""Data: descriptors, ImageFolder/CSV listing, class-set checks, bad images, transforms, loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from visionpeft.data import (
    DataError,
    ImageDataset,
    build_transforms,
    list_split,
    list_splits,
    load_descriptor,
    read_image,
    resolve_data_config,
)
from visionpeft.data.toy import make_toy_imagefolder
from visionpeft.errors import ConfigError
from visionpeft.packaged import ASSETS
from visionpeft.recipe.classification import AugmentSection

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return make_toy_imagefolder(tmp_path / "toy", classes=3, train_per_class=4, val_per_class=2, size=16)


def test_folder_descriptor_and_listing(toy):
    info = load_descriptor(toy)
    assert info.format == "imagefolder" and set(info.splits) == {"train", "val"}
    splits = list_splits(info, {"train": "train", "val": "val"})
    assert splits["train"].classes == ("class_0", "class_1", "class_2")
    assert splits["train"].counts() == {"class_0": 4, "class_1": 4, "class_2": 4}
    assert len(splits["val"].samples) == 6
    assert list_split(info, "train", max_per_class=1).counts() == {"class_0": 1, "class_1": 1, "class_2": 1}


def test_digits_descriptor_is_complete():
    info = load_descriptor(ASSETS / "datasets" / "digits.yaml")
    s = list_splits(info, {"train": "train", "val": "val"})
    assert info.names == tuple(str(i) for i in range(10))
    assert len(s["train"].samples) == 1442 and len(s["val"].samples) == 355
    assert read_image(s["val"].samples[0][0]).shape == (32, 32, 3)


def test_yaml_descriptor_errors(tmp_path, toy):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"path": str(toy), "train": "train", "val": "val", "nmaes": ["a"]}))
    with pytest.raises(ConfigError, match=r"nmaes: unknown key; did you mean 'names'"):
        load_descriptor(bad)
    bad.write_text(yaml.safe_dump({"path": str(toy), "train": "train", "val": "valid",
                                   "download": "https://example.org/toy.zip"}))
    with pytest.raises(ConfigError, match=r"do not exist.*valid.*https://example.org/toy.zip"):
        load_descriptor(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_descriptor(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no train/ and val/"):
        load_descriptor(toy / "train")


def test_different_class_sets_are_an_error(toy):
    (toy / "val" / "class_2").rename(toy / "val" / "class_9")
    with pytest.raises(DataError, match=r"split 'val' has a different class set.*class_9.*class_2"):
        list_splits(load_descriptor(toy), {"train": "train", "val": "val"})


def test_csv_lists(tmp_path, toy):
    rows = ["path,label"] + [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(toy.rglob("*.png"))]
    train = [r for r in rows if "/train/" in r or r == "path,label"]
    val = [r for r in rows if "/val/" in r or r == "path,label"]
    (tmp_path / "train.csv").write_text("\n".join(train))
    (tmp_path / "val.csv").write_text("\n".join(val))
    desc = tmp_path / "toy.yaml"
    desc.write_text(yaml.safe_dump({"format": "csv", "path": ".", "train": "train.csv", "val": "val.csv",
                                    "names": ["class_0", "class_1", "class_2"]}))
    s = list_splits(load_descriptor(desc), {"train": "train", "val": "val"})
    assert len(s["train"].samples) == 12 and s["val"].counts()["class_1"] == 2
    assert s["train"].samples[0][0].is_file()
    (tmp_path / "val.csv").write_text("file,cls\nx,y\n")
    with pytest.raises(DataError, match="'path' and 'label'"):
        list_splits(load_descriptor(desc), {"train": "train", "val": "val"})


def test_corrupt_image_error_and_skip(toy):
    broken = toy / "train" / "class_1" / "img_001.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    samples = list_split(load_descriptor(toy), "train").samples
    ds = ImageDataset(samples, None)
    index = [i for i, (p, _) in enumerate(samples) if p == broken][0]
    with pytest.raises(DataError, match=r"img_001\.png: cannot read this image.*skip_bad_images"):
        ds[index]
    skipping = ImageDataset(samples, None, skip_bad_images=True, split="train")
    assert skipping.skipped == [broken] and len(skipping) == len(samples) - 1


def test_transforms_shapes_and_normalisation():
    cfg = resolve_data_config({"input_size": (3, 64, 64), "mean": (0.5,) * 3, "std": (0.5,) * 3,
                               "crop_pct": 0.875, "interpolation": "bicubic"}, AugmentSection(img_size=32))
    assert cfg.img_size == 32
    train_tf, eval_tf = build_transforms(cfg, AugmentSection(img_size=32, color_jitter=0.4))
    image = np.full((50, 70, 3), 255, dtype=np.uint8)
    out = eval_tf(image=image)["image"]
    assert tuple(out.shape) == (3, 32, 32)
    assert float(out.min()) == pytest.approx(1.0)  # (1 - 0.5) / 0.5
    assert tuple(train_tf(image=image)["image"].shape) == (3, 32, 32)
    assert not AugmentSection().deterministic
    assert AugmentSection(random_resized_crop=False, hflip=0).deterministic


def test_augmentation_is_a_function_of_seed_epoch_index(toy):
    cfg = resolve_data_config({"input_size": (3, 16, 16)}, AugmentSection(img_size=16))
    train_tf, _ = build_transforms(cfg, AugmentSection(img_size=16, color_jitter=0.4, hflip=0.5))
    samples = list_split(load_descriptor(toy), "train").samples
    a = ImageDataset(samples, train_tf, seed=0)
    b = ImageDataset(samples, build_transforms(cfg, AugmentSection(img_size=16, color_jitter=0.4, hflip=0.5))[0],
                     seed=0)
    first = [a[i][0] for i in range(4)]
    assert all(np.array_equal(x, b[i][0]) for i, x in enumerate(first))  # same seed, epoch, index
    a.set_epoch(1)
    assert not all(np.array_equal(x, a[i][0]) for i, x in enumerate(first))  # a new epoch, new crops
