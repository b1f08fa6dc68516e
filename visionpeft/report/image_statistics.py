"""Ultralytics' metrics of a weighted multiset of test images, from per-image records
(:mod:`visionpeft.image_records`): what the bootstrap evaluates on every resample.

A resample is a count per image, ``counts (B, N)`` (image ``i`` drawn ``counts[b, i]`` times in replicate ``b``).
Each statistic returns ``(B,)`` values equal to what Ultralytics' validator would report on that multiset:

* :func:`ap_statistic`: mAP as ``ultralytics.utils.metrics.ap_per_class`` computes it (predictions sorted by
  confidence, per class cumulative TP/FP, recall over the class's label count, the precision envelope, 101-point
  interpolation integrated with the trapezoid rule, ``compute_ap``), averaged over the classes that have labels
  in the multiset and over the IoU thresholds (``map50_95``: all 10, ``map50``: the first). A drawn image's
  predictions and labels are repeated ``counts`` times, so a replicate is exactly the metric of the duplicated
  image set. ``counts`` of ones give the validator's own value (tested against ``ap_per_class``).
* :func:`miou_statistic`: ``SemanticMetrics``' mIoU from the summed per-image confusion matrices (IoU of every
  class with ground-truth pixels, averaged; one-class data: the foreground IoU).

Cost: the AP statistic re-sorts nothing (predictions are sorted once); per replicate it repeats the drawn
predictions and runs one cumulative sum and ``10 x classes`` interpolations: about 1 ms for BCCD's 72 test images
(3 classes, a few thousand predictions) on one CPU core. The mIoU statistic is one ``(B, N) x (N, C^2)`` product.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..image_records import ImageRecords

__all__ = ["statistic", "ap_statistic", "miou_statistic", "mean_statistic", "AP_COLUMNS"]

#: IoU-threshold columns of ``tp`` each AP metric averages (Ultralytics: 0.50, 0.55, ..., 0.95).
AP_COLUMNS: dict[str, slice] = {"map50_95": slice(0, 10), "map50": slice(0, 1)}

_X = np.linspace(0, 1, 101)  # COCO's 101 recall points, as ultralytics.utils.metrics.compute_ap
_TRAPZ = getattr(np, "trapezoid", None) or np.trapz  # NumPy 2 renamed trapz; Ultralytics picks the same way

Statistic = Callable[[np.ndarray], np.ndarray]


def _ap_metric(metric: str) -> slice:
    """The IoU columns of ``metric`` (``mask_map50_95`` -> all 10): the name without its ``mask_``/``pose_``."""
    base = metric.split("_", 1)[1] if metric.startswith(("mask_", "pose_")) else metric
    if base not in AP_COLUMNS:
        raise ValueError(f"per-image records: {metric!r} is not an AP metric ({sorted(AP_COLUMNS)})")
    return AP_COLUMNS[base]


def _class_ap(tp: np.ndarray, n_labels: float, eps: float = 1e-16) -> np.ndarray:
    """AP per IoU column of one class: ``tp (P, J)`` sorted by confidence, ``n_labels`` its label count.

    Ultralytics' ``ap_per_class`` + ``compute_ap`` for one class, in float64.
    """
    tpc = tp.cumsum(0)
    fpc = (1 - tp).cumsum(0)
    recall = tpc / (n_labels + eps)
    precision = tpc / (tpc + fpc)
    out = np.empty(tp.shape[1])
    for j in range(tp.shape[1]):  # one np.interp per column: a shared, shifted axis would round recall values
        mrec = np.concatenate(([0.0], recall[:, j], [recall[-1, j]], [1.0]))
        mpre = np.concatenate(([1.0], precision[:, j], [0.0], [0.0]))
        mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
        out[j] = _TRAPZ(np.interp(_X, mrec, mpre), _X)
    return out


def ap_statistic(rec: ImageRecords) -> Statistic:
    """mAP of ``rec.metric`` over weighted image multisets (see the module docstring)."""
    cols = _ap_metric(rec.metric)
    a = rec.arrays
    order = np.argsort(-a["conf"], kind="stable")
    tp = a["tp"][order][:, cols].astype(np.float64)
    pred_cls, pred_image = a["pred_cls"][order].astype(np.int64), a["pred_image"][order].astype(np.int64)
    target_cls, target_image = a["target_cls"].astype(np.int64), a["target_image"].astype(np.int64)
    classes = np.unique(target_cls)
    per_class = [(np.flatnonzero(pred_cls == c), target_image[target_cls == c]) for c in classes]

    def one(counts: np.ndarray) -> float:
        aps = []
        for preds, labels in per_class:
            n_labels = counts[labels].sum()
            if n_labels == 0:
                continue  # the class has no label in this multiset: Ultralytics leaves it out of the mean
            reps = counts[pred_image[preds]]
            if reps.sum() == 0:
                aps.append(np.zeros(tp.shape[1]))
                continue
            aps.append(_class_ap(np.repeat(tp[preds], reps, axis=0), float(n_labels)))
        return float(np.mean(aps)) if aps else 0.0

    def stat(counts: np.ndarray) -> np.ndarray:
        counts = np.atleast_2d(np.asarray(counts)).astype(np.int64)
        return np.array([one(c) for c in counts])

    return stat


def miou_statistic(rec: ImageRecords) -> Statistic:
    """``SemanticMetrics``' mIoU of weighted image multisets from per-image confusion matrices."""
    m = rec.arrays["matrices"].astype(np.float64)
    n, c, _ = m.shape
    flat = m.reshape(n, c * c)
    binary = rec.binary

    def stat(counts: np.ndarray) -> np.ndarray:
        total = (np.atleast_2d(np.asarray(counts, dtype=np.float64)) @ flat).reshape(-1, c, c)
        inter = np.diagonal(total, axis1=1, axis2=2)
        rows = total.sum(2)
        union = rows + total.sum(1) - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
        if binary:
            return iou[:, 1]
        present = rows > 0
        return np.where(present.any(1), (iou * present).sum(1) / np.maximum(present.sum(1), 1), 0.0)

    return stat


def mean_statistic(rec: ImageRecords) -> Statistic:
    """The weighted mean of per-image values (depth's delta1, classify's top-1)."""
    values = rec.arrays["values"].astype(np.float64)

    def stat(counts: np.ndarray) -> np.ndarray:
        counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
        return counts @ values / counts.sum(1)

    return stat


def statistic(rec: ImageRecords) -> Statistic:
    """The statistic of ``rec``'s kind."""
    return {"ap": ap_statistic, "confusion": miou_statistic, "mean": mean_statistic}[rec.kind](rec)
