"""Record what Ultralytics' validator scores per image, while it validates (for ``<split>_images.npz``).

Nothing is recomputed: the recorder wraps the validator's own accumulation and keeps each image's share.

* detect / segment / pose / obb: ``DetMetrics.update_stats`` receives one dict per image (``tp``, ``tp_m`` or
  ``tp_p`` flags at 10 IoU thresholds, ``conf``, ``pred_cls``, ``target_cls``, ``im_name``); the primary metric's
  flags are kept (``mask_*`` -> ``tp_m``, ``pose_*`` -> ``tp_p``, else ``tp``).
* semantic / depth: ``update_stats(preds, targets)`` receives a batch; the recorder feeds it one image at a time
  and keeps the change of the accumulator (``SemanticMetrics.matrix``, ``DepthMetrics._totals``), so the sums
  are Ultralytics' own and the per-image pieces add up to them exactly.
* classify: ``update_metrics`` appends the batch's top-5 predictions and labels; the recorder keeps top-1
  correctness, with the file names from the (unshuffled) validation dataset's ``samples``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...image_records import ImageRecords
from ...ultralytics_tasks import UltralyticsTask

__all__ = ["ImageRecorder"]

_KIND = {"classify": "mean", "depth": "mean", "semantic": "confusion"}


def _tp_key(metric: str) -> str:
    return "tp_m" if metric.startswith("mask_") else "tp_p" if metric.startswith("pose_") else "tp"


class ImageRecorder:
    """Collects one validation's per-image results for ``row``'s primary metric; :meth:`attach` it to a validator
    before calling it, then :meth:`records`."""

    def __init__(self, row: UltralyticsTask) -> None:
        self.row = row
        self.kind = _KIND.get(row.name, "ap")
        self.files: list[str] = []
        self.items: list[Any] = []
        self._batch_files: list[str] = []
        self._validator: Any = None

    def attach(self, validator: Any) -> None:
        """Wrap ``validator.init_metrics`` (to wrap the metrics object it sets up) and ``update_metrics``."""
        self._validator = validator
        init, update = validator.init_metrics, validator.update_metrics

        def init_metrics(model: Any) -> None:
            init(model)
            self._wrap_metrics(validator.metrics)

        def update_metrics(preds: Any, batch: dict[str, Any]) -> None:
            self._batch_files = [Path(f).name for f in batch.get("im_file", ()) or ()]
            update(preds, batch)
            if self.row.name == "classify":
                correct = validator.pred[-1][:, 0] == validator.targets[-1]
                self.items += correct.double().tolist()

        validator.init_metrics, validator.update_metrics = init_metrics, update_metrics

    def _wrap_metrics(self, metrics: Any) -> None:
        if self.kind == "ap":
            stats = metrics.update_stats
            key = _tp_key(self.row.primary)

            def update_stats(stat: dict[str, Any]) -> None:
                self.items.append({k: np.asarray(stat[k]) for k in (key, "conf", "pred_cls", "target_cls")})
                self.files.append(str(stat.get("im_name", f"#{len(self.files)}")))
                stats(stat)

            metrics.update_stats = update_stats
        elif self.kind in ("confusion", "mean") and self.row.name != "classify":
            self._wrap_dense(metrics)

    def _wrap_dense(self, metrics: Any) -> None:
        """Feed ``update_stats`` one image at a time and keep each image's change of the accumulator."""
        stats = metrics.update_stats
        depth = self.row.name == "depth"
        column = list(metrics.keys).index(self.row.primary_key) if depth else 0

        def state() -> Any:
            acc = metrics._totals if depth else metrics.matrix
            return (None if acc is None else acc.detach().clone().double().cpu(), getattr(metrics, "_count", 0.0))

        def update_stats(preds: Any, targets: Any) -> None:
            for i in range(preds.shape[0]):
                (before, count) = state()
                stats(preds[i:i + 1], targets[i:i + 1])
                after, count_after = state()
                name = self._batch_files[i] if i < len(self._batch_files) else f"#{len(self.files)}"
                change = after if before is None else after - before
                if depth and count_after == count:
                    continue  # Ultralytics skipped the image (under 10 valid pixels): not in its mean either
                self.items.append(float(change[column]) if depth else change.numpy())
                self.files.append(name)

        metrics.update_stats = update_stats

    def records(self) -> ImageRecords:
        """The per-image records of the validation that ran (see :mod:`visionpeft.image_records`).

        Raises:
            ValueError: nothing was recorded (the validator saw no image).
        """
        if not self.items:
            raise ValueError("per-image records: the validation recorded no image")
        metric = self.row.primary
        if self.kind == "ap":
            return self._ap_records(metric)
        if self.row.name == "classify":
            samples = self._validator.dataloader.dataset.samples
            files = tuple(Path(s[0]).name for s in samples[:len(self.items)])
            return ImageRecords("mean", metric, files, {"values": np.asarray(self.items, dtype=np.float64)})
        if self.kind == "mean":
            return ImageRecords("mean", metric, tuple(self.files), {"values": np.asarray(self.items)})
        return ImageRecords("confusion", metric, tuple(self.files),
                            {"matrices": np.stack(self.items).astype(np.int64)},
                            binary=int(getattr(self._validator.metrics, "nc", 0)) == 1)

    def _ap_records(self, metric: str) -> ImageRecords:
        key = _tp_key(metric)
        width = next((np.shape(it[key])[-1] for it in self.items if np.ndim(it[key]) == 2), 10)  # IoU thresholds
        tp = [np.asarray(it[key], dtype=bool).reshape(len(it["conf"]), width) for it in self.items]
        pred_image = np.concatenate([np.full(len(it["conf"]), i, dtype=np.int32) for i, it in enumerate(self.items)])
        target_image = np.concatenate([np.full(len(it["target_cls"]), i, dtype=np.int32)
                                       for i, it in enumerate(self.items)])
        arrays = {"tp": np.concatenate(tp),
                  "conf": np.concatenate([it["conf"] for it in self.items]).astype(np.float32),
                  "pred_cls": np.concatenate([it["pred_cls"] for it in self.items]).astype(np.int32),
                  "pred_image": pred_image,
                  "target_cls": np.concatenate([it["target_cls"] for it in self.items]).astype(np.int32),
                  "target_image": target_image}
        return ImageRecords("ap", metric, tuple(self.files), arrays)
