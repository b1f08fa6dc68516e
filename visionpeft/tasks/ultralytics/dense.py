"""Ultralytics' dense-prediction tasks, ``semantic`` (YOLO26-sem) and ``depth`` (YOLO26-depth): their label rules
(:class:`SemanticRule`, :class:`DepthRule`) and depth's prediction fields (:func:`depth_predictions`), as their rows
of :data:`visionpeft.ultralytics_tasks.TASKS` name them.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...safe_yaml import brief
from .labels import BoxRule, LabelRule

__all__ = ["SemanticRule", "MaskRule", "PolygonSemanticRule", "DepthRule", "IGNORE_ID", "DEFAULT_DEPTH_SCALE",
           "ASPECT_TOLERANCE", "mask_path", "depth_path", "label_lut", "check_mask", "check_depth_map",
           "depth_scale_of", "masks_dir_of", "depth_summary", "depth_predictions"]

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
    """The mask of ``image``: ``<masks_dir>/.../x.png`` (``SemanticDataset.get_label_files``), else, as
    ``verify_image_mask`` looks further, the first existing ``x.<image suffix>``."""
    from .images import image_suffixes

    png = _relocate(image, masks_dir, ".png")
    if png.is_file():
        return png
    return next((alt for alt in map(png.with_suffix, sorted(image_suffixes())) if alt.is_file()), png)


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


def depth_predictions(result: Any) -> list[dict[str, Any]]:
    """The ``depth`` row's prediction fields of one Ultralytics ``Results``: :func:`depth_summary` of its map."""
    return depth_summary(result.depth.data)


# ------------------------------------------------------------------------------------------------- the rules
@dataclass(frozen=True)
class MaskRule(LabelRule):
    """``semantic`` with ``masks_dir``: one PNG of class ids per image (:func:`check_mask`).

    Attributes:
        masks_dir: the mask folder's name (beside ``images``); label_mapping: the yaml's raw id -> class id pairs;
        yaml_path: the data yaml, for messages.
    """

    masks_dir: str = "masks"
    label_mapping: tuple[tuple[Any, Any], ...] = ()
    yaml_path: str = "data"

    def check_split(self, images: list[Path], nc: int) -> int:
        """Check every image's mask; returns the number of masks."""
        invalid = label_lut(nc, dict(self.label_mapping) if self.label_mapping else None, self.yaml_path)
        for image in images:
            check_mask(mask_path(image, self.masks_dir), image, invalid, nc)
        return len(images)


@dataclass(frozen=True)
class PolygonSemanticRule(BoxRule):
    """``semantic`` without ``masks_dir``: YOLO polygon files, checked as ``segment`` labels. Ultralytics rasterises
    them (``PolygonSemanticDataset``) and adds a ``background`` class when the yaml names more than one."""

    def trained_names(self, names: dict[int, str]) -> dict[int, str]:
        """The yaml's classes as Ultralytics' ``add_polygon_background`` extends them (``background`` appended)."""
        from ultralytics.data.utils import add_polygon_background

        data = add_polygon_background({"names": dict(names), "nc": len(names)})
        return {int(k): str(v) for k, v in data["names"].items()}


class SemanticRule:
    """The ``semantic`` row's label rule: :class:`MaskRule` when the data yaml has ``masks_dir``, as Ultralytics
    then reads ``SemanticDataset``, else :class:`PolygonSemanticRule` (``PolygonSemanticDataset``)."""

    @staticmethod
    def from_data(doc: Mapping[str, Any], path: Path) -> LabelRule:
        masks_dir = masks_dir_of(doc, path)
        if masks_dir is None:
            return PolygonSemanticRule()
        mapping = doc.get("label_mapping")
        label_lut(1, mapping, path)  # a malformed mapping is an error before any image is read
        return MaskRule(masks_dir, tuple(mapping.items()) if mapping else (), str(path))


@dataclass(frozen=True)
class DepthRule(LabelRule):
    """The ``depth`` row's label rule: one 16-bit depth PNG (or float ``.npy``) per image (:func:`check_depth_map`).

    Attributes:
        depth_scale: the yaml's PNG value per metre (checked by :func:`depth_scale_of`).
    """

    depth_scale: float = DEFAULT_DEPTH_SCALE

    @classmethod
    def from_data(cls, doc: dict[str, Any], path: Path) -> LabelRule:
        return cls(depth_scale_of(doc, path))

    def check_split(self, images: list[Path], nc: int) -> int:
        """Check every image's depth map; returns the number of depth maps."""
        for image in images:
            check_depth_map(depth_path(image), image)
        return len(images)
