"""Ultralytics' dense-prediction tasks, ``semantic`` (YOLO26-sem) and ``depth`` (YOLO26-depth): their label rules
and prediction fields, as the task table's rows call them.

Label files (Ultralytics 8.4.190, ``ultralytics/data/dataset.py`` and ``ultralytics/data/utils.py``):

* ``semantic`` with ``masks_dir`` in the data yaml (``SemanticDataset``): ``.../images/<split>/x.jpg`` has the mask
  ``.../<masks_dir>/<split>/x.png``, a single-channel PNG of class ids (8- or 16-bit, or a palette PNG whose
  indices are the ids), 255 = ignore, of the image's size. The yaml's optional ``label_mapping`` maps raw ids to
  class ids first (``ignore_label`` / null -> 255). ``verify_image_mask`` drops an image whose mask is missing, of
  another size, or holds ids that are neither classes nor 255, with a warning; here each is an error.
  Without ``masks_dir`` (``PolygonSemanticDataset``) the labels are YOLO polygon files, checked by the
  segment rule of :mod:`.labels` (Ultralytics rasterises them and adds a ``background`` class).
* ``depth`` (``DepthDataset``): ``.../images/<split>/x.jpg`` has ``.../depth/<split>/x.png`` (else ``x.npy``): a
  single-channel 16-bit PNG whose value / ``depth_scale`` (data yaml, default 1000) is metres, 0 = no
  measurement; or a 2-D float ``.npy`` in metres. ``verify_image_depth`` drops an image whose depth map is
  missing, not 16-bit, or of another aspect ratio than the image (more than 2 %; it resizes any other size to
  the image), with a warning; here each is an error. The rule is Ultralytics' own, so a depth map at half the
  image's resolution is still accepted, as Ultralytics trains on it.

Every check raises :class:`~visionpeft.errors.ConfigError` with one line naming the file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...safe_yaml import brief

__all__ = ["IGNORE_ID", "DEFAULT_DEPTH_SCALE", "ASPECT_TOLERANCE", "mask_path", "depth_path", "label_lut",
           "check_mask", "check_mask_split", "check_depth_map", "check_depth_split", "depth_scale_of",
           "masks_dir_of", "depth_summary"]

#: Ultralytics' ignore label in semantic masks.
IGNORE_ID = 255
#: Ultralytics' default ``depth_scale`` (PNG value per metre) when the data yaml has none.
DEFAULT_DEPTH_SCALE = 1000
#: ``verify_image_depth``'s bound on ``|log(depth aspect / image aspect)|``.
ASPECT_TOLERANCE = 0.02
#: PIL modes of 16-bit greyscale PNGs (``load_depth`` accepts ``I`` and ``I;16``).
_DEPTH_MODES = frozenset({"I", "I;16"})
#: PIL modes that hold one class id per pixel (``read_mask``: ``1`` is 0/1, ``P`` palette indices or grey levels).
_MASK_MODES = frozenset({"1", "L", "P", "I", "I;16"})


def _relocate(image: Path, folder: str, suffix: str) -> Path:
    """Ultralytics' pairing: the last ``/images/`` of the path becomes ``/<folder>/``, the suffix ``suffix``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}{folder}{os.sep}"
    text = str(image)
    if sa in text:
        text = sb.join(text.rsplit(sa, 1))
    return Path(text).with_suffix(suffix)


def mask_path(image: Path, masks_dir: str = "masks") -> Path:
    """The mask PNG of ``image`` (``SemanticDataset.get_label_files``: ``img2label_paths(..., masks_dir, .png)``)."""
    return _relocate(image, masks_dir, ".png")


def depth_path(image: Path) -> Path:
    """The depth map of ``image`` (``DepthDataset._depth_path_for``): ``depth/.../x.png``, else ``x.npy``."""
    png = _relocate(image, "depth", ".png")
    return png if png.is_file() else png.with_suffix(".npy")


def masks_dir_of(doc: Mapping[str, Any], yaml_path: Path) -> str | None:
    """The data yaml's ``masks_dir`` (``None``: polygon labels), checked to be a folder name."""
    value = doc.get("masks_dir")
    if value in (None, ""):
        return None
    if not isinstance(value, str) or "/" in value or "\\" in value:
        raise ConfigError(f"{yaml_path}: masks_dir: expected the name of the mask folder beside 'images' (e.g. "
                          f"masks), got {brief(value)}")
    return value


def depth_scale_of(doc: Mapping[str, Any], yaml_path: Path) -> float:
    """The data yaml's ``depth_scale`` (PNG value per metre; Ultralytics' default 1000), checked."""
    value = doc.get("depth_scale", DEFAULT_DEPTH_SCALE)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ConfigError(f"{yaml_path}: depth_scale: expected a positive number (PNG value per metre, e.g. 1000 "
                          f"for millimetres), got {brief(value)}")
    return float(value)


def label_lut(nc: int, mapping: Any = None, yaml_path: Path | str = "data") -> list[bool]:
    """256 flags: ``True`` for a raw mask id that is neither a class id nor 255 after ``label_mapping``.

    As ``SemanticDataset.verify_args``: a binary set (``nc`` 1) keeps ids 0 and 1.
    """
    table = list(range(256))
    if mapping is not None:
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"{yaml_path}: label_mapping: expected a mapping of raw id -> class id, got "
                              f"{brief(mapping)}")
        for src, dst in mapping.items():
            try:
                raw = int(src)
                new = IGNORE_ID if dst is None or str(dst).strip() == "ignore_label" else int(dst)
            except (TypeError, ValueError):
                raise ConfigError(f"{yaml_path}: label_mapping: {brief(src)}: {brief(dst)} is not 'raw id: class "
                                  "id' (or ignore_label)") from None
            if 0 <= raw < 256:
                table[raw] = new
    top = max(nc - 1, 1)
    return [not (v <= top or v == IGNORE_ID) for v in table]


def _image_hw(image: Path) -> tuple[int, int]:
    """``(height, width)`` as Ultralytics reads the image (EXIF rotation applied, like its ``exif_size``)."""
    from PIL import Image

    with Image.open(image) as im:
        w, h = im.size
        try:
            rotated = im.getexif().get(274) in (5, 6, 7, 8)  # orientation tag: a 90-degree turn swaps the sides
        except Exception:  # noqa: BLE001 - unreadable EXIF is ignored, as Ultralytics ignores it
            rotated = False
    return (w, h) if rotated else (h, w)


def _read_mask(path: Path) -> Any:
    """The class ids of a mask PNG (``read_mask``: palette indices, or grey levels for a grey palette)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in _MASK_MODES:
                raise ConfigError(f"{path}: semantic mask of PIL mode {mode!r}: expected a single-channel PNG "
                                  "holding one class id per pixel (8- or 16-bit greyscale or a palette PNG), not "
                                  "colours")
            if mode == "P":
                pal = np.asarray(im.getpalette() or [0, 0, 0]).reshape(-1, 3)
                return np.asarray(im.convert("L") if (pal == pal[:, :1]).all() else im)
            return np.asarray(im).astype(np.int64)
    except OSError as exc:
        raise ConfigError(f"{path}: semantic mask cannot be read ({exc})") from None


def check_mask(path: Path, image: Path, invalid: list[bool], nc: int) -> None:
    """One image's mask: it exists, is single-channel, has the image's size and holds class ids or 255 only.

    Args:
        path: the mask (:func:`mask_path`); image: its image; invalid: :func:`label_lut`; nc: the yaml's classes.
    """
    import numpy as np

    if not path.is_file():
        raise ConfigError(f"{image}: no semantic mask {path} (masks_dir: each image needs a PNG of class ids "
                          "with its stem, in the folder that mirrors 'images')")
    mask = _read_mask(path)
    ih, iw = _image_hw(image)
    if mask.shape[:2] != (ih, iw):
        raise ConfigError(f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image {image} "
                          f"({iw}x{ih}); a mask must match its image pixel for pixel")
    ids = np.unique(mask)
    bad = [int(v) for v in ids if v > 255 or invalid[int(v)]]
    if bad:
        raise ConfigError(f"{path}: mask values {bad[:8]} are outside the classes: expected class ids "
                          f"0..{max(nc - 1, 1)} (after label_mapping) or {IGNORE_ID} (ignore)")


def check_mask_split(images: list[Path], doc: Mapping[str, Any], nc: int, yaml_path: Path) -> int:
    """Check the masks of one split (``masks_dir`` sets); returns how many images have one."""
    masks_dir = masks_dir_of(doc, yaml_path) or "masks"
    invalid = label_lut(nc, doc.get("label_mapping"), yaml_path)
    for image in images:
        check_mask(mask_path(image, masks_dir), image, invalid, nc)
    return len(images)


def check_depth_map(path: Path, image: Path) -> None:
    """One image's depth map: it exists, is a 16-bit single-channel PNG (or 2-D float ``.npy``) and has the image's
    aspect ratio (Ultralytics resizes it to the image)."""
    if not path.is_file():
        raise ConfigError(f"{image}: no depth map {path.with_suffix('.png')} (each image needs a 16-bit PNG, or a "
                          "float .npy in metres, with its stem in the 'depth' folder that mirrors 'images')")
    if path.suffix.lower() == ".npy":
        hw = _npy_hw(path)
    else:
        hw = _png_hw(path)
    ih, iw = _image_hw(image)
    if abs(math.log((hw[1] / hw[0]) / (iw / ih))) > ASPECT_TOLERANCE:
        raise ConfigError(f"{path}: depth map size {hw[1]}x{hw[0]} does not match its image {image} ({iw}x{ih}): "
                          "the aspect ratios differ; a depth map must cover the image pixel for pixel")


def _png_hw(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            fmt, mode, size = im.format, im.mode, im.size
            im.verify()
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for a damaged file
        raise ConfigError(f"{path}: depth map cannot be read ({exc})") from None
    if fmt != "PNG" or mode not in _DEPTH_MODES:
        raise ConfigError(f"{path}: depth map is a {fmt} of PIL mode {mode!r}; expected a single-channel 16-bit PNG "
                          "(uint16: value / depth_scale = metres, 0 = no measurement)")
    return size[1], size[0]


def _npy_hw(path: Path) -> tuple[int, int]:
    import numpy as np

    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: depth map cannot be read ({exc})") from None
    if arr.ndim != 2 or arr.dtype.kind != "f":
        raise ConfigError(f"{path}: depth map of shape {arr.shape} and dtype {arr.dtype}; expected a 2-D float array "
                          "in metres")
    return int(arr.shape[0]), int(arr.shape[1])


def check_depth_split(images: list[Path], doc: Mapping[str, Any], nc: int, yaml_path: Path) -> int:
    """Check ``depth_scale`` and the depth map of every image of one split; returns how many there are."""
    depth_scale_of(doc, yaml_path)
    for image in images:
        check_depth_map(depth_path(image), image)
    return len(images)


def depth_summary(depth: Any, decimals: int = 5) -> list[dict[str, Any]]:
    """One prediction row for a predicted depth map (``Results.depth.data``, metres, HxW): its valid (``> 0``)
    range and median in metres and the map's size. Ultralytics' ``Results.summary()`` returns no row for depth."""
    import numpy as np

    arr = depth.detach().float().cpu().numpy() if hasattr(depth, "detach") else np.asarray(depth, dtype=np.float32)
    valid = arr[arr > 0]
    row: dict[str, Any] = {"height": int(arr.shape[0]), "width": int(arr.shape[1])}
    if valid.size:
        row.update(min_m=round(float(valid.min()), decimals), max_m=round(float(valid.max()), decimals),
                   median_m=round(float(np.median(valid)), decimals))
    return [row]
