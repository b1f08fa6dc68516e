"""Images and the dataset description shared by both Ultralytics data formats (data yaml, class folders).

:func:`image_suffixes` is Ultralytics' own list of image suffixes (``ultralytics.data.utils.IMG_FORMATS``), read
from Ultralytics rather than copied: the checks list exactly the files Ultralytics' dataset loaders and predictor
read. :func:`image_problem` says why Ultralytics could not train on an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ...errors import ConfigError

__all__ = ["DataInfo", "image_suffixes", "image_problem", "readable_images", "READABLE_MODES"]


@cache
def image_suffixes() -> frozenset[str]:
    """Ultralytics' image suffixes (``IMG_FORMATS``), lower case with the dot."""
    from ultralytics.data.utils import IMG_FORMATS

    return frozenset(f".{f.lower()}" for f in IMG_FORMATS)


@dataclass(frozen=True)
class DataInfo:
    """What a dataset describes (either data format).

    Attributes:
        source: the data yaml, or the dataset folder of a folder-format task (``classify``).
        names: class id -> name, as the task's Ultralytics trainer gives them to the model (polygon ``semantic``
            data: the yaml's classes and ``background``, see :meth:`.labels.LabelRule.trained_names`).
        splits: split name -> image files.
        boxes: split name -> number of labels (label rows; per-pixel maps for ``semantic`` masks and ``depth``),
            counted when ``check_labels``.
        skipped: split name -> unreadable images left out of ``splits`` (``skip_bad_images``).
    """

    source: Path
    names: dict[int, str]
    splits: dict[str, list[Path]]
    boxes: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def nc(self) -> int:
        return len(self.names)


#: PIL modes Ultralytics' reader (OpenCV ``imread``) turns into correct 8-bit BGR (16-bit grey is scaled).
READABLE_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I;16L", "I;16B",
                            "I;16N"})


def image_problem(path: Path) -> str | None:
    """Why Ultralytics cannot train on the image at ``path`` (a one-line message naming it), or ``None``."""
    from ...data.image import SKIP_HINT, ImageError, open_checked

    try:
        img = open_checked(path)
    except ImageError as exc:
        return str(exc)
    mode = img.mode
    img.close()
    if mode not in READABLE_MODES:
        return (f"{path}: PIL image mode {mode!r} (32-bit integer or float samples), which Ultralytics' image reader "
                f"(OpenCV) cannot decode. Save it as 8- or 16-bit RGB or greyscale. {SKIP_HINT}")
    return None


def readable_images(images: list[Path], skip_bad: bool, where: str) -> tuple[list[Path], list[Path]]:
    """(readable images, skipped ones); without ``skip_bad`` the first unreadable image is an error."""
    good, bad = [], []
    for image in images:
        problem = image_problem(image)
        if problem is None:
            good.append(image)
        elif not skip_bad:
            raise ConfigError(problem)
        else:
            bad.append(image)
    if not good:
        raise ConfigError(f"{where}: no readable images left after skipping {len(bad)} unreadable ones")
    return good, bad
