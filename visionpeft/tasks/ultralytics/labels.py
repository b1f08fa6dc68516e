"""YOLO label-file rules per Ultralytics task, checked before Ultralytics reads them.

Ultralytics (``ultralytics.data.utils.verify_image_label``) drops an image whose label file breaks its rules with
a warning; here the first broken line is an error naming the file and line. Rules by task:

* ``detect`` / ``segment``: ``class cx cy w h`` (5 numbers) or a polygon ``class x1 y1 x2 y2 ...`` (segment
  labels are polygons; a detector trains on their bounding boxes), coordinates in [0, 1];
* ``pose``: ``class cx cy w h`` followed by ``nkpt * ndim`` keypoint values (``kpt_shape: [nkpt, ndim]`` in the
  data yaml; ``ndim`` 3 adds a visibility flag), keypoint x/y in [0, 1];
* ``obb``: ``class x1 y1 x2 y2 x3 y3 x4 y4`` (4 corners). As in Ultralytics, the range check applies to the
  corners' enclosing box ``cx cy w h`` (within [-0.01, 1.01]): a corner may stick out of the image (upstream
  DOTA8 has corners at 1.015) as long as that box is normalised.

Geometry, the same for every task (``LabelRule.check_geometry``): a box must have width and height; a polygon (segment
and detect polygons, OBB corners) must enclose an area: points that all lie on one line (zero width, zero height,
or collinear along a diagonal) are degenerate; a pose label's box must have an extent and each keypoint's
visibility flag (``ndim`` 3) must be 0, 1 or 2 (COCO's not labelled / hidden / visible).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ...errors import ConfigError
from ...safe_yaml import brief, read_text_file

__all__ = ["LabelRule", "BoxRule", "OBBRule", "PoseRule", "check_label_file", "label_path"]

# Ultralytics accepts coordinates a hair outside [0, 1] from rounding in converters; so do we.
_COORD_TOL = 1e-6
#: Ultralytics' own bound for corner points (``points.max() <= 1.01``, negatives down to -0.01).
_OBB_TOL = 0.01
#: A polygon whose points all lie within this distance (a fraction of the image side) of one line has no area.
_LINE_TOL = 1e-6
#: Keypoint visibility flags (COCO): 0 not labelled, 1 labelled but hidden, 2 visible.
_VISIBILITY = (0.0, 1.0, 2.0)


@dataclass(frozen=True)
class LabelRule:
    """The label-line format of one Ultralytics task (a row's ``label_rule`` names its class).

    Attributes:
        tol: how far outside [0, 1] a coordinate may lie (rounding in converters; OBB corners: Ultralytics' 0.01).
    """

    tol: ClassVar[float] = _COORD_TOL

    @classmethod
    def from_data(cls, doc: dict[str, Any], path: Path) -> LabelRule:
        """The rule for the data yaml ``doc`` (read from ``path``)."""
        return cls()

    def expected(self) -> str:
        """The line format, for error messages."""
        raise NotImplementedError

    def fields_ok(self, n: int) -> bool:
        """Whether a line of ``n`` numbers (class id included) has the format."""
        raise NotImplementedError

    def points(self, coords: list[float]) -> list[float]:
        """The coordinates that must lie in the image."""
        return coords

    def check_geometry(self, coords: list[float], where: str, line: str) -> None:
        """No empty box or polygon (see the module docstring)."""
        _check_extent(coords, where, line)
        if len(coords) > 4:  # a polygon (segment / detect) or OBB corners
            _check_area(coords, where, line)

    def check_split(self, images: list[Path], nc: int) -> int:
        """Check the labels of one split's ``images`` against a data yaml of ``nc`` classes; returns the number of
        labels found (here: rows of the YOLO label files beside the images; a task whose labels are per-pixel maps
        overrides this, see :mod:`.dense`)."""
        return sum(check_label_file(lp, nc, self) for lp in map(label_path, images) if lp.is_file())

    def trained_names(self, names: dict[int, str]) -> dict[int, str]:
        """The classes the task's Ultralytics trainer gives the model for a data yaml naming ``names`` (the same,
        unless the trainer adds one, as polygon ``semantic`` data gets a ``background`` class)."""
        return names


@dataclass(frozen=True)
class BoxRule(LabelRule):
    """``detect`` / ``segment``: a box ``class cx cy w h`` or a polygon ``class x1 y1 x2 y2 ...``."""

    def expected(self) -> str:
        return "'class cx cy w h' (5 numbers) or a polygon 'class x1 y1 x2 y2 ...'"

    def fields_ok(self, n: int) -> bool:
        return n == 5 or (n > 6 and n % 2 == 1)


@dataclass(frozen=True)
class OBBRule(LabelRule):
    """``obb``: ``class x1 y1 x2 y2 x3 y3 x4 y4``; the range applies to the corners' enclosing box."""

    tol: ClassVar[float] = _OBB_TOL

    def expected(self) -> str:
        return "'class x1 y1 x2 y2 x3 y3 x4 y4' (9 numbers: class and 4 corners)"

    def fields_ok(self, n: int) -> bool:
        return n == 9

    def points(self, coords: list[float]) -> list[float]:
        xs, ys = coords[0::2], coords[1::2]
        w, h = max(xs) - min(xs), max(ys) - min(ys)
        return [min(xs) + w / 2, min(ys) + h / 2, w, h]


@dataclass(frozen=True)
class PoseRule(LabelRule):
    """``pose``: ``class cx cy w h`` + ``nkpt * ndim`` keypoint values.

    Attributes:
        kpt_shape: ``(nkpt, ndim)``, the data yaml's ``kpt_shape``.
    """

    kpt_shape: tuple[int, int] = (17, 3)

    @classmethod
    def from_data(cls, doc: dict[str, Any], path: Path) -> LabelRule:
        return cls(_kpt_shape(doc, path))

    def expected(self) -> str:
        n, d = self.kpt_shape
        return f"'class cx cy w h' + {n} keypoints x {d} values ({5 + n * d} numbers, kpt_shape {[n, d]})"

    def fields_ok(self, n: int) -> bool:
        return n == 5 + self.kpt_shape[0] * self.kpt_shape[1]

    def points(self, coords: list[float]) -> list[float]:
        """Box and keypoint x/y, not the visibility flags."""
        ndim = self.kpt_shape[1]
        return coords[:4] + [v for i, v in enumerate(coords[4:]) if i % ndim < 2]

    def check_geometry(self, coords: list[float], where: str, line: str) -> None:
        _check_extent(coords[:4], where, line)
        _check_visibility(coords[4:], self.kpt_shape, where, line)


def label_path(image: Path) -> Path:
    """Ultralytics' label location for an image (last ``/images/`` -> ``/labels/``, suffix ``.txt``)."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    text = str(image)
    if sa in text:
        text = sb.join(text.rsplit(sa, 1))
    return Path(text).with_suffix(".txt")


def check_label_file(path: Path, nc: int, rule: LabelRule = BoxRule()) -> int:
    """Validate one YOLO label file against ``rule``; return its row count."""
    rows = 0
    tol = rule.tol
    for lineno, raw in enumerate(read_text_file(path, "label file").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        where = f"{path}:{lineno}"
        if not rule.fields_ok(len(parts)):
            raise ConfigError(f"{where}: malformed label line {brief(line)}: expected {rule.expected()}, "
                              f"got {len(parts)} numbers")
        try:
            cls_f = float(parts[0])
            coords = [float(v) for v in parts[1:]]
        except ValueError:
            raise ConfigError(f"{where}: malformed label line {brief(line)}: every field must be a number") from None
        if not math.isfinite(cls_f) or cls_f != int(cls_f) or not 0 <= cls_f < nc:  # int(nan) raises
            raise ConfigError(
                f"{where}: class id {parts[0]} out of range: the data yaml has {nc} classes (ids 0..{nc - 1})"
            )
        if any(not (-tol <= v <= 1 + tol) for v in rule.points(coords)):
            raise ConfigError(f"{where}: coordinates {brief(parts[1:])} are not normalised to [0, 1]")
        rule.check_geometry(coords, where, line)
        rows += 1
    return rows


def _kpt_shape(doc: dict[str, Any], path: Path) -> tuple[int, int]:
    """A pose data yaml's ``kpt_shape: [nkpt, ndim]`` (``ndim`` 2 or 3)."""
    shape = doc.get("kpt_shape")
    if (not isinstance(shape, list) or len(shape) != 2 or not all(isinstance(v, int) and v > 0 for v in shape)
            or shape[1] not in (2, 3)):
        raise ConfigError(f"{path}: kpt_shape: expected [keypoints, 2 or 3] such as [17, 3] for a pose dataset, "
                          f"got {brief(shape)}")
    return int(shape[0]), int(shape[1])


def _check_visibility(kpts: list[float], kpt_shape: tuple[int, int], where: str, line: str) -> None:
    nkpt, ndim = kpt_shape
    if ndim != 3:
        return
    bad = [i + 1 for i in range(nkpt) if kpts[i * 3 + 2] not in _VISIBILITY]
    if bad:
        raise ConfigError(f"{where}: keypoint {bad[0]} has visibility {kpts[(bad[0] - 1) * 3 + 2]:g} in label line "
                          f"{brief(line)}: expected 0 (not labelled), 1 (hidden) or 2 (visible)")


def _check_area(coords: list[float], where: str, line: str) -> None:
    """The points must not all lie on one line (a polygon or rotated box of zero area)."""
    pts = list(zip(coords[0::2], coords[1::2]))
    x0, y0 = pts[0]
    far = max(pts, key=lambda p: (p[0] - x0) ** 2 + (p[1] - y0) ** 2)
    dx, dy = far[0] - x0, far[1] - y0
    length = (dx * dx + dy * dy) ** 0.5
    # distance of every point from the line through the first point and the point farthest from it
    if length > 0 and max(abs(dx * (y - y0) - dy * (x - x0)) for x, y in pts) / length > _LINE_TOL:
        return
    raise ConfigError(
        f"{where}: degenerate polygon in label line {brief(line)}: its {len(pts)} points lie on one line, so it "
        "encloses no area (a zero-area mask or rotated box). Fix or delete the line"
    )


def _check_extent(coords: list[float], where: str, line: str) -> None:
    """A box (``cx cy w h``) or polygon must cover an area: Ultralytics would train on an empty box."""
    if len(coords) == 4:
        width, height = coords[2], coords[3]
    else:
        xs, ys = coords[0::2], coords[1::2]
        width, height = max(xs) - min(xs), max(ys) - min(ys)
    if width <= 0 or height <= 0:
        raise ConfigError(
            f"{where}: {'zero-width' if width <= 0 else 'zero-height'} box in label line {brief(line)}: "
            f"w and h must be > 0 (fraction of the image). Fix or delete the line"
        )
