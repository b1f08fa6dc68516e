"""Ultralytics' metrics of a weighted multiset of test images, from per-image records
(:mod:`visionpeft.image_records`): what the bootstrap evaluates on every resample.

A resample is a count per image, ``counts (B, N)`` (image ``i`` drawn ``counts[b, i]`` times in replicate ``b``).
Each statistic returns ``(B,)`` values equal to what Ultralytics' validator would report on that multiset:

* :func:`ap_statistic`: mAP as ``ultralytics.utils.metrics.ap_per_class`` computes it (predictions sorted by
  confidence, per class cumulative TP/FP, recall over the class's label count, the precision envelope, 101-point
  interpolation integrated with the trapezoid rule, ``compute_ap``), averaged over the classes that have labels
  in the multiset and over the IoU thresholds (``map50_95``: all 10, ``map50``: the first). A drawn image's
  predictions and labels are repeated ``counts`` times, so a replicate is the metric of the duplicated image set
  (``ap_per_class`` of it, tested to 1e-12; where confidences tie, with the tied predictions in the order the whole
  set's sort gave them, as ``ap_per_class``'s own order among ties is arbitrary). ``counts`` of ones give the
  validator's own value, ties included (the same ``np.argsort`` on the same array).
* :func:`miou_statistic`: ``SemanticMetrics``' mIoU from the summed per-image confusion matrices (IoU of every
  class with ground-truth pixels, averaged; one-class data: the foreground IoU).

Cost: the AP statistic sorts once and collapses every run of predictions that are false positives at all IoU
thresholds into one step (exact, see ``_ClassCurve``); per replicate it repeats the drawn steps and runs one
cumulative sum and ``10 x classes`` interpolations: 0.4-2 ms for one BCCD test set (72 images, 10,000-16,000
predictions at Ultralytics' ``conf=0.001``) on one CPU core. The mIoU statistic is one ``(B, N) x (N, C^2)`` product.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from ..image_records import ImageRecords

__all__ = ["Statistic", "statistic", "ap_statistic", "miou_statistic", "mean_statistic", "AP_COLUMNS"]

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


def _class_ap(tp_inc: np.ndarray, fp_inc: np.ndarray, n_labels: float, eps: float = 1e-16) -> np.ndarray:
    """AP per IoU column of one class from its predictions' TP / FP increments ``(P, J)`` in confidence order.

    Ultralytics' ``ap_per_class`` + ``compute_ap`` for one class, in float64 (increments of 1 per prediction
    give exactly its cumulative counts).
    """
    tpc = tp_inc.cumsum(0)
    fpc = fp_inc.cumsum(0)
    recall = tpc / (n_labels + eps)
    precision = tpc / (tpc + fpc)
    j = tp_inc.shape[1]
    mrec = np.concatenate((np.zeros((1, j)), recall, recall[-1:], np.ones((1, j))))
    mpre = np.concatenate((np.ones((1, j)), precision, np.zeros((2, j))))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre, 0), 0), 0)  # the precision envelope, every column at once
    # np.interp per column: one shared, shifted recall axis would round the recall values
    curves = np.stack([np.interp(_X, mrec[:, c], mpre[:, c]) for c in range(j)])
    return _TRAPZ(curves, _X, axis=1)


class _ClassCurve:
    """One class's predictions in confidence order, with every run of predictions that are false positives at all
    IoU thresholds collapsed to one step.

    Why that is exact: inside such a run recall stays put and precision falls, so its points never raise the
    precision envelope (the point before the run, at the same recall, is higher), and at a recall value
    ``np.interp`` reads the last point of a run, which is kept with the run's whole false-positive count. On
    BCCD's test split this leaves a few hundred of the 4,000-9,000 predictions per class (conf >= 0.001).
    """

    def __init__(self, tp: np.ndarray, image: np.ndarray) -> None:
        hit = tp.any(1)
        # a segment per kept step: each true-positive row alone, each maximal run of all-FP rows together
        new = np.ones(len(hit), bool)
        new[1:] = hit[1:] | hit[:-1]
        self.starts = np.flatnonzero(new)
        self.hit = hit[self.starts]
        self.tp = tp[self.starts].astype(np.float64)
        self.image = image

    def ap(self, counts: np.ndarray, n_labels: float) -> np.ndarray | None:
        """AP per column on the multiset ``counts (N,)``; ``None`` when it holds no prediction of the class."""
        weight = np.add.reduceat(counts[self.image], self.starts) if len(self.starts) else np.zeros(0, np.int64)
        if not weight.any():
            return None
        reps = np.where(self.hit, weight, weight > 0)  # a drawn TP repeats; an FP run is one step of its weight
        fp_step = np.where(self.hit[:, None], 1.0 - self.tp, weight[:, None].astype(np.float64))
        return _class_ap(np.repeat(self.tp, reps, axis=0), np.repeat(fp_step, reps, axis=0), n_labels)


def ap_statistic(rec: ImageRecords) -> Statistic:
    """mAP of ``rec.metric`` over weighted image multisets (see the module docstring)."""
    cols = _ap_metric(rec.metric)
    a = rec.arrays
    # Ultralytics' own call on the same concatenation (the recorder keeps the validator's image order): the whole
    # set then reproduces the validator's mAP even where confidences tie (fp16 outputs tie often), since
    # ap_per_class's default sort puts tied predictions in an order of its own, which AP depends on.
    order = np.argsort(-a["conf"])
    tp = a["tp"][order][:, cols]
    pred_cls, pred_image = a["pred_cls"][order].astype(np.int64), a["pred_image"][order].astype(np.int64)
    target_cls, target_image = a["target_cls"].astype(np.int64), a["target_image"].astype(np.int64)
    width = tp.shape[1]
    per_class = [(_ClassCurve(tp[pred_cls == c], pred_image[pred_cls == c]), target_image[target_cls == c])
                 for c in np.unique(target_cls)]

    def one(counts: np.ndarray) -> float:
        aps = []
        for curve, labels in per_class:
            n_labels = counts[labels].sum()
            if n_labels == 0:
                continue  # the class has no label in this multiset: Ultralytics leaves it out of the mean
            ap = curve.ap(counts, float(n_labels))
            aps.append(np.zeros(width) if ap is None else ap)  # labels but no prediction: AP 0, as Ultralytics
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
    """The statistic of ``rec``'s kind, remembering its last few answers: a compare's report asks full
    fine-tuning's runs the same resamples (a fixed generator seed) once per strategy row."""
    fn = {"ap": ap_statistic, "confusion": miou_statistic, "mean": mean_statistic}[rec.kind](rec)
    memo: dict[tuple[tuple[int, ...], bytes], np.ndarray] = {}

    def remembered(counts: np.ndarray) -> np.ndarray:
        counts = np.ascontiguousarray(np.atleast_2d(counts))
        key = (counts.shape, hashlib.blake2b(counts.tobytes(), digest_size=16).digest())
        if key not in memo:
            if len(memo) >= 4:  # the whole set and the resamples of one bootstrap, with room to spare
                memo.pop(next(iter(memo)))
            memo[key] = fn(counts)
        return memo[key]

    return remembered
