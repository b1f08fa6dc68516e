"""Check an Ultralytics data yaml and its label files before Ultralytics sees them.

Ultralytics skips a corrupt label file with a warning (the image silently drops out of training) and
reports a missing folder deep inside its dataset code. Here every problem is an error naming the file
and line, found before any training time is spent.

The resolution rules follow Ultralytics' ``check_det_dataset``: without a ``path:`` key the splits are
relative to the yaml's folder; a split is a folder (searched recursively), a ``.txt`` list of image paths,
or a list of those; the label of ``.../images/x.jpg`` is ``.../labels/x.txt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...safe_yaml import brief, brief_text, load_yaml_file, read_text_file
from ...ultralytics_tasks import UltralyticsTask
from ...ultralytics_tasks import get as task_row
from .images import DataInfo, image_suffixes, readable_images
from .labels import label_path

__all__ = ["check_data", "label_path", "resolve_task_data", "model_kwargs", "write_without_skipped"]

def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"data: data yaml {path} does not exist")
    doc = load_yaml_file(path, "data")
    if not isinstance(doc, dict):
        raise ConfigError(f"data: {path} must be a mapping with train/val/names keys")
    return doc


def _names(doc: dict[str, Any], path: Path) -> dict[int, str]:
    names = doc.get("names")
    if isinstance(names, list):
        out = dict(enumerate(str(n) for n in names))
    elif isinstance(names, dict):
        try:
            out = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: 'names' keys must be class ids 0..nc-1, got {list(names)[:5]}") from None
        if sorted(out) != list(range(len(out))):
            raise ConfigError(f"{path}: 'names' ids must be 0..{len(out) - 1} without gaps, got {sorted(out)}")
    elif names is None and isinstance(doc.get("nc"), int):
        out = {i: f"class{i}" for i in range(doc["nc"])}
    else:
        raise ConfigError(f"{path}: needs 'names' (a list or an id -> name mapping), e.g. names: [cat, dog]")
    if "nc" in doc and doc["nc"] != len(out):
        raise ConfigError(f"{path}: nc: {doc['nc']} but 'names' lists {len(out)} classes")
    if not out:
        raise ConfigError(f"{path}: 'names' is empty")
    return out


def _root(doc: dict[str, Any], path: Path) -> Path:
    if not doc.get("path"):
        return path.parent
    root = Path(str(doc["path"]))
    if not root.is_absolute():
        # Ultralytics resolves a relative 'path:' against the working directory, not the yaml's folder, and
        # failing that against its datasets_dir setting (its own yamls: 'path: coco8').
        from ...backends.ultralytics_names import datasets_dir

        root = root.resolve() if root.exists() else (datasets_dir() / root).resolve()
    if not root.is_dir():
        raise ConfigError(
            f"{path}: path: {brief(doc['path'])} is not a folder ({root}; a relative path is taken from the working "
            "directory, else from Ultralytics' datasets_dir). Give an absolute path, or drop 'path:' "
            "so the splits resolve relative to the yaml's folder"
        )
    return root


def _split_images(entry: Any, root: Path, yaml_path: Path, split: str) -> list[Path]:
    items = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for item in items:
        p = Path(str(item))
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            images += sorted(f for f in p.rglob("*") if f.suffix.lower() in image_suffixes())
        elif p.is_file() and p.suffix == ".txt":
            for line in read_text_file(p, f"{yaml_path}: {split} image list").splitlines():
                line = line.strip()
                if line:
                    f = Path(line)
                    images.append(f if f.is_absolute() else (p.parent / line).resolve())
        elif p.is_file() and p.suffix.lower() in image_suffixes():
            images.append(p)
        else:
            raise ConfigError(f"{yaml_path}: {split}: {brief(item)} -> {brief_text(str(p))} does not exist "
                              "(expected an image folder)")
    if not images:
        raise ConfigError(f"{yaml_path}: {split}: no images under {brief(items)} "
                          f"(suffixes {sorted(image_suffixes())[:6]}...)")
    return images


def resolve_task_data(data: str | Path, row: UltralyticsTask) -> str:
    """Ultralytics' own dataset names (``coco8``, ``imagenette160``) -> the local yaml / folder, as it resolves them
    for the task's data format; paths unchanged."""
    from ...backends.ultralytics_names import resolve_cls_data, resolve_data

    return resolve_cls_data(data) if row.data_format == "folder" else resolve_data(data)


def model_kwargs(data: str | Path, row: UltralyticsTask) -> dict[str, Any]:
    """Keywords of the task's model class taken from the data yaml, as the task trainer's ``get_model`` passes
    them (pose: ``data_kpt_shape``); ``{}`` for tasks without any."""
    if not row.model_data_keys:
        return {}
    doc = _read_yaml(Path(resolve_task_data(data, row)))
    return {kw: tuple(doc[key]) if isinstance(doc.get(key), list) else doc.get(key) for key, kw in row.model_data_keys}


def check_data(data: str | Path, *, check_labels: bool = True, splits: tuple[str, ...] = ("train", "val"),
               check_images: bool = False, skip_bad_images: bool = False, task: str = "detect") -> DataInfo:
    """Validate an Ultralytics data yaml of ``task`` (and its labels and images); ``classify``: a dataset folder.

    Args:
        data: the data yaml.
        check_labels: read every label file of the checked splits (class ids, field counts, ranges, box sizes).
        splits: splits that must exist; ``test`` is checked when the yaml lists it.
        check_images: decode every image of the checked splits completely (the same check classification makes):
            Ultralytics would otherwise drop an empty or truncated image with a warning and train without it.
        skip_bad_images: leave unreadable images out (listed in ``DataInfo.skipped``) instead of an error.
        task: the Ultralytics task whose label rules apply (see :mod:`.labels`); ``classify`` reads a folder
            (see :func:`.cls_data.check_cls_data`).

    Raises:
        ConfigError: naming the yaml key, folder, image, or label file and line that is wrong.
    """
    from ...engines import load_attr

    row = task_row(task)
    if row.data_format == "folder":
        from .cls_data import check_cls_data

        return check_cls_data(resolve_task_data(data, row), splits=splits, check_images=check_images or check_labels,
                              skip_bad_images=skip_bad_images)
    path = Path(resolve_task_data(data, row))  # Ultralytics' own names (coco8.yaml) -> its dataset yaml
    doc = _read_yaml(path)
    names = _names(doc, path)
    root = _root(doc, path)
    rule = load_attr(str(row.label_rule), f"the label rule of task {row.name!r}").from_data(doc, path)
    wanted = list(splits) + [s for s in ("test",) if s in doc and s not in splits and doc[s]]
    out: dict[str, list[Path]] = {}
    boxes: dict[str, int] = {}
    skipped: dict[str, list[Path]] = {}
    for split in wanted:
        if not doc.get(split):
            raise ConfigError(f"{path}: missing '{split}:' (an image folder relative to the yaml, e.g. images/{split})")
        out[split] = _split_images(doc[split], root, path, split)
        if check_images:
            out[split], skipped[split] = readable_images(out[split], skip_bad_images, f"{path}: {split}")
        if check_labels:
            boxes[split] = rule.check_split(out[split], len(names))
            if split == "train" and boxes[split] == 0:
                raise ConfigError(
                    f"{path}: train: no labels found for {len(out[split])} images (expected YOLO label files "
                    f"such as {label_path(out[split][0])}, beside an 'images' folder in a 'labels' folder)"
                )
    return DataInfo(source=path, names=rule.trained_names(names), splits=out, boxes=boxes, skipped=skipped)


def write_without_skipped(info: DataInfo, out_dir: Path) -> Path:
    """A data yaml in ``out_dir`` whose splits list only ``info``'s readable images (``.txt`` image lists).

    Labels still resolve beside the original images (``.../images/x.jpg`` -> ``.../labels/x.txt``, ``masks/``,
    ``depth/``); every other key of the original yaml is kept.
    """
    import yaml

    out_dir.mkdir(parents=True, exist_ok=True)
    # The task's own keys stay (kpt_shape, masks_dir, label_mapping, depth_scale...), and the yaml's own 'names'
    # (info.names may hold a class the trainer adds, which it would then add twice).
    original = _read_yaml(info.source)
    doc: dict[str, Any] = {"path": str(out_dir), **{k: v for k, v in original.items()
                                                    if k not in ("path", "train", "val", "test", "download")}}
    for split, images in info.splits.items():
        listing = out_dir / f"images-{split}.txt"
        listing.write_text("".join(f"{p.resolve()}\n" for p in images))
        doc[split] = str(listing)
    for required in ("train", "val"):  # Ultralytics needs both keys; an eval of 'test' lists only that split
        doc.setdefault(required, doc[next(iter(info.splits))])
    target = out_dir / "data.yaml"
    target.write_text(yaml.safe_dump(doc, sort_keys=False))
    return target
