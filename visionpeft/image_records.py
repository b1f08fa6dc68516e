"""Per-image test results of an Ultralytics run (``<split>_images.npz``): what the compare report's bootstrap
resamples when the metric is not a mean over images.

Ultralytics' validators score a split from per-image pieces and only then reduce them: mAP from every
prediction's true-positive flags at the 10 IoU thresholds, confidence and class plus every image's label classes
(``DetMetrics.update_stats``); mIoU from a confusion matrix summed over images (``SemanticMetrics``); depth's
delta1 and classify's top-1 as a mean over images. The records keep exactly those pieces per image, so the
statistic of any multiset of the images (a bootstrap resample) is Ultralytics' own metric of that multiset
(:mod:`visionpeft.report.image_statistics`).

Kinds and arrays (``N`` images, ``P`` predictions, ``T`` labelled objects):

* ``ap`` (detect, segment, pose, obb): ``tp (P, 10)`` bool for the primary metric (boxes ``tp``, masks ``tp_m``,
  keypoints ``tp_p``), ``conf (P,)``, ``pred_cls (P,)``, ``pred_image (P,)`` and ``target_cls (T,)``,
  ``target_image (T,)`` (image indices into ``files``). BCCD's 72 test images (10,000-16,000 predictions at
  Ultralytics' ``conf=0.001``): 40-68 kB compressed.
* ``confusion`` (semantic): ``matrices (N, C, C)`` per-image pixel counts (rows: truth, columns: prediction).
* ``mean`` (depth, classify): ``values (N,)`` the image's own metric (classify also ``labels (N,)``; depth:
  images Ultralytics skips, with fewer than 10 valid pixels, are left out, as in its mean).

``files`` are image file names in evaluation order (classify: ``<class folder>/<file>``); two runs are paired
by name. The file is NumPy's ``.npz``,
read with ``allow_pickle=False`` (no object arrays: nothing in it can run code).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ImageRecords", "records_path", "write_records", "read_records", "KINDS"]

#: Arrays each kind must have (besides ``files``).
KINDS: dict[str, tuple[str, ...]] = {
    "ap": ("tp", "conf", "pred_cls", "pred_image", "target_cls", "target_image"),
    "confusion": ("matrices",),
    "mean": ("values",),
}


@dataclass(frozen=True)
class ImageRecords:
    """One run's per-image results on one split (see the module docstring).

    Attributes:
        kind: ``ap``, ``confusion`` or ``mean``.
        metric: visionpeft's name of the metric they give (``map50_95``, ``mask_map50_95``, ``miou``, ...).
        files: image file names, ``(N,)``.
        arrays: the kind's arrays (:data:`KINDS`).
        binary: ``confusion`` only: Ultralytics' one-class data (mIoU is the foreground IoU).
    """

    kind: str
    metric: str
    files: tuple[str, ...]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    binary: bool = False

    def __post_init__(self) -> None:
        missing = [k for k in KINDS.get(self.kind, ("?",)) if k not in self.arrays]
        if self.kind not in KINDS or missing:
            raise ValueError(f"per-image records: kind {self.kind!r} needs arrays {KINDS.get(self.kind)}; "
                             f"missing {missing}")

    def reorder(self, order: np.ndarray) -> ImageRecords:
        """The same records with image ``j`` being old image ``order[j]`` (for pairing runs by file name)."""
        order = np.asarray(order, dtype=np.int64)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        a = dict(self.arrays)
        if self.kind == "ap":
            a["pred_image"] = inverse[a["pred_image"]]
            a["target_image"] = inverse[a["target_image"]]
        else:  # every array of these kinds is per image (values, labels, matrices)
            a = {k: v[order] for k, v in a.items()}
        return ImageRecords(self.kind, self.metric, tuple(self.files[i] for i in order), a, self.binary)


def records_path(run_dir: Path, split: str) -> Path:
    """``<run_dir>/<split>_images.npz``."""
    return Path(run_dir) / f"{split}_images.npz"


def write_records(run_dir: Path, split: str, records: ImageRecords) -> Path:
    """Write ``records`` atomically (a temporary file renamed into place); return the path."""
    path = records_path(run_dir, split)
    arrays = {f"a_{k}": np.asarray(v) for k, v in records.arrays.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, kind=np.array(records.kind), metric=np.array(records.metric),
                                files=np.array(records.files, dtype=str), binary=np.array(records.binary),
                                **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_records(run_dir: Path, split: str = "test") -> ImageRecords | None:
    """The run's per-image records on ``split``; ``None`` when it has none or the file is unreadable or
    inconsistent (the report then falls back to the seed t-interval and says so)."""
    path = records_path(run_dir, split)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k[2:]: z[k] for k in z.files if k.startswith("a_")}
            rec = ImageRecords(kind=str(z["kind"]), metric=str(z["metric"]), files=tuple(map(str, z["files"])),
                               arrays=arrays, binary=bool(z["binary"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):  # a truncated or foreign file
        return None
    return rec if rec.files and _consistent(rec) else None


def _consistent(rec: ImageRecords) -> bool:
    n, a = len(rec.files), rec.arrays
    if rec.kind == "ap":
        p = len(a["conf"])
        return (a["tp"].ndim == 2 and a["tp"].shape[1] == 10  # Ultralytics' IoU thresholds 0.50:0.95
                and len(a["tp"]) == len(a["pred_cls"]) == len(a["pred_image"]) == p
                and len(a["target_cls"]) == len(a["target_image"])
                and all(x.size == 0 or (x.min() >= 0 and x.max() < n) for x in (a["pred_image"], a["target_image"])))
    return all(len(v) == n for v in a.values())  # every array of these kinds is per image
