"""Listing samples: ImageFolder trees and ``path,label`` CSV files -> ``(path, class_index)`` lists."""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..safe_yaml import read_text_file
from .descriptor import DatasetInfo

__all__ = ["IMAGE_EXTENSIONS", "SplitSamples", "list_split", "list_splits", "check_class_sets"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})


class DataError(ConfigError):
    """A dataset file is unreadable or inconsistent."""


@dataclass(frozen=True)
class SplitSamples:
    """One split: samples as ``(path, class index)`` and the class names (index order)."""

    split: str
    samples: list[tuple[Path, int]]
    classes: tuple[str, ...]
    source: str = ""  #: the folder or CSV file the split was listed from (named in messages)

    def counts(self) -> dict[str, int]:
        c = Counter(label for _, label in self.samples)
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}


def _folder_classes(root: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for cls_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in cls_dir.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        if files:
            out[cls_dir.name] = files
    return out


def _read_csv(path: Path) -> list[tuple[Path, str]]:
    text = read_text_file(path, "CSV split", encoding="utf-8-sig")
    with io.StringIO(text, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            raise DataError(f"{path}: a CSV split needs a header with 'path' and 'label' columns; "
                            f"found {reader.fieldnames}")
        rows = []
        for line, row in enumerate(reader, start=2):
            if not row["path"] or row["label"] in (None, ""):
                raise DataError(f"{path}:{line}: empty path or label")
            p = Path(row["path"])
            rows.append((p if p.is_absolute() else path.parent / p, row["label"].strip()))
    return rows


def list_split(info: DatasetInfo, split: str, max_per_class: int | None = None) -> SplitSamples:
    """Samples of one split, class indices following ``info.names`` (or sorted class names)."""
    where = info.split(split)
    if info.format == "csv":
        rows = _read_csv(where)
        if not rows:
            raise DataError(f"empty split in {where}: split {split!r} has a header but no 'path,label' rows; add its "
                            "images or point the dataset YAML at the right file")
        found = sorted({label for _, label in rows})
    else:
        if not where.is_dir():
            raise DataError(f"{where}: split {split!r} is not a folder")
        per_class = _folder_classes(where)
        if not per_class:
            raise DataError(f"{where}: no class folders with images ({sorted(IMAGE_EXTENSIONS)})")
        rows = [(f, name) for name, files in per_class.items() for f in files]
        found = list(per_class)
    classes = info.names or tuple(found)
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(found) - set(index))
    if unknown:
        raise DataError(f"{where}: classes {unknown[:10]} are not in the dataset's names {list(classes)[:20]}")
    samples, taken = [], Counter()
    for path, label in rows:
        if max_per_class is not None and taken[label] >= max_per_class:
            continue
        taken[label] += 1
        samples.append((path, index[label]))
    return SplitSamples(split=split, samples=samples, classes=tuple(classes), source=str(where))


def check_class_sets(splits: dict[str, SplitSamples]) -> None:
    """Every split must contain exactly the training split's classes (same names, same indices)."""
    train = splits.get("train") or next(iter(splits.values()))
    train_present = {train.classes[i] for _, i in train.samples}
    for name, s in splits.items():
        present = {s.classes[i] for _, i in s.samples}
        if s.classes != train.classes or present != train_present:
            only_here = sorted(present - train_present)
            only_train = sorted(train_present - present)
            raise DataError(
                f"split {name!r} has a different class set from {train.split!r}: classes only in "
                f"{name!r}: {only_here[:10]}; classes only in {train.split!r}: {only_train[:10]}. "
                "Every split needs the same class folders (or list the classes in the dataset YAML's names)."
            )


def check_enough_classes(train: SplitSamples, where: Path | str) -> None:
    """Classification needs at least two classes: with one, every prediction is right and nothing is learnt."""
    present = sorted({train.classes[i] for _, i in train.samples})
    if len(present) < 2:
        raise DataError(
            f"{where}: split {train.split!r} has {len(present)} class{'' if len(present) == 1 else 'es'} "
            f"{present}; classification needs at least 2 (one class gives top-1 = 1.0 and nothing to learn). "
            "Add a folder (or CSV label) per class"
        )


def list_splits(info: DatasetInfo, names: dict[str, str], max_per_class: int | None = None
                ) -> dict[str, SplitSamples]:
    """List several splits (role -> split name, e.g. ``{"train": "train", "val": "val"}``) and check them.

    Raises:
        DataError: an empty split, fewer than 2 classes in the training split, or splits whose class sets differ.
    """
    out = {role: list_split(info, split, max_per_class) for role, split in names.items()}
    train = out.get("train") or next(iter(out.values()))
    check_enough_classes(train, info.splits.get(train.split, info.root))
    check_class_sets(out)
    return out
