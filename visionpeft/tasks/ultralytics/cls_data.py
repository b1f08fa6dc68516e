"""Check an Ultralytics classification dataset folder (``task: classify``) before Ultralytics reads it.

Ultralytics' ``check_cls_dataset`` reads ``<data>/train/<class>/*`` and ``<data>/val/<class>/*`` (or ``test``
in place of ``val``); class names are the sorted sub-folder names of ``train``. Here a missing split, a class
folder without images, a split whose classes differ from train's, and an undecodable image are errors naming
the folder or file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import ConfigError

if TYPE_CHECKING:
    from .images import DataInfo

__all__ = ["check_cls_data"]


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir())


def check_cls_data(data: str | Path, *, splits: tuple[str, ...] = ("train", "val"), check_images: bool = False,
                   skip_bad_images: bool = False) -> DataInfo:
    """Validate a classification dataset folder; return a :class:`~.data.DataInfo` (``names`` from train).

    Raises:
        ConfigError: not a folder, a missing split, a class folder without images, other classes than train's,
            or (``check_images``) an undecodable image. ``skip_bad_images`` does not apply: Ultralytics reads the
            class folders themselves, so an image cannot be left out without changing the dataset; fix or remove
            the file the error names.
    """
    from .images import DataInfo, image_suffixes, readable_images

    root = Path(data)
    if not root.is_dir():
        raise ConfigError(f"data: {root} is not a folder; task: classify reads a dataset folder with train/ and "
                          "val/ sub-folders, one folder per class inside each")
    train = root / "train"
    if not train.is_dir() or not _class_dirs(train):
        raise ConfigError(f"data: {train}: missing, or no class folders inside (expected train/<class>/*.jpg)")
    names = {i: p.name for i, p in enumerate(_class_dirs(train))}
    out: dict[str, list[Path]] = {}
    skipped: dict[str, list[Path]] = {}
    for split in splits:
        folder = root / split
        if split == "val" and not folder.is_dir() and (root / "test").is_dir():
            folder = root / "test"  # Ultralytics validates on test/ when there is no val/
        if not folder.is_dir():
            raise ConfigError(f"data: {folder}: missing (expected {split}/<class>/*.jpg beside train/)")
        classes = [p.name for p in _class_dirs(folder)]
        if split != "train" and not set(classes) <= set(names.values()):
            raise ConfigError(f"data: {folder}: classes {sorted(set(classes) - set(names.values()))} are not "
                              f"in train/ ({list(names.values())[:6]}); the class folders must match")
        images = []
        for cls in _class_dirs(folder):
            found = sorted(f for f in cls.rglob("*") if f.suffix.lower() in image_suffixes())
            if not found and split == "train":
                raise ConfigError(f"data: {cls}: no images (suffixes {sorted(image_suffixes())[:6]}...)")
            images += found
        if check_images:
            images, skipped[split] = readable_images(images, False, f"{folder}")
        out[split] = images
    del skip_bad_images  # folder datasets cannot leave files out: bad images are always errors (see above)
    return DataInfo(source=root, names=names, splits=out, skipped=skipped)
