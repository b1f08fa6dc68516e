"""Record what Ultralytics' validator scores per image, while it validates (for ``<split>_images.npz``).

Nothing is recomputed: the recorder wraps the validator's own accumulation and keeps each image's share.

* detect / segment / pose / obb: ``DetMetrics.update_stats`` receives one dict per image (``tp``, ``tp_m`` or
  ``tp_p`` flags at 10 IoU thresholds, ``conf``, ``pred_cls``, ``target_cls``, ``im_name``); the primary metric's
  flags are kept (``mask_*`` -> ``tp_m``, ``pose_*`` -> ``tp_p``, else ``tp``).
* semantic / depth: ``update_stats(preds, targets)`` receives a batch; the recorder feeds it one image at a time
  and keeps the change of the accumulator (``SemanticMetrics.matrix``, ``DepthMetrics._totals``), so the sums
  are Ultralytics' own and the per-image pieces add up to them exactly.
* classify: ``update_metrics`` appends the batch's top-5 predictions and labels; the recorder keeps top-1
  correctness and the label. Ultralytics' classify loader shuffles (``build_dataloader``'s default) and its
  items carry no file name, so the recorder builds the same loader with ``shuffle=False`` (the metric does not
  depend on the order) and names the results by the dataset's ``samples``.

A second validation with the same recorder starts a new record (``init_metrics`` clears it), and a metrics
object is wrapped once.
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
        self.labels: list[int] = []
        self._batch_files: list[str] = []
        self._validator: Any = None

    def attach(self, validator: Any) -> None:
        """Wrap ``validator.init_metrics`` (to wrap the metrics object it sets up) and ``update_metrics``
        (classify: also ``get_dataloader``)."""
        self._validator = validator
        init, update = validator.init_metrics, validator.update_metrics

        def init_metrics(model: Any) -> None:
            init(model)
            self.files, self.items, self.labels = [], [], []  # one validation's record
            self._wrap_metrics(validator.metrics)

        def update_metrics(preds: Any, batch: dict[str, Any]) -> None:
            self._batch_files = [Path(f).name for f in batch.get("im_file", ()) or ()]
            update(preds, batch)
            if self.row.name == "classify":
                self.items += (validator.pred[-1][:, 0] == validator.targets[-1]).double().tolist()
                self.labels += validator.targets[-1].tolist()

        validator.init_metrics, validator.update_metrics = init_metrics, update_metrics
        if self.row.name == "classify":
            validator.get_dataloader = self._ordered_loader(validator)

    @staticmethod
    def _ordered_loader(validator: Any) -> Any:
        """``ClassificationValidator.get_dataloader`` with ``shuffle=False`` (Ultralytics' own otherwise)."""
        from ultralytics.data import build_dataloader

        def get_dataloader(dataset_path: Any, batch_size: int) -> Any:
            dataset = validator.build_dataset(dataset_path)
            if not dataset.samples:
                raise FileNotFoundError(f"No images from the model's classes found in {dataset_path}")
            return build_dataloader(dataset, batch_size, validator.args.workers, shuffle=False, rank=-1,
                                    device=validator.device)

        return get_dataloader

    def _wrap_metrics(self, metrics: Any) -> None:
        if getattr(metrics, "_visionpeft_recorded", False):
            return  # already wrapped (a second validation reusing the metrics object)
        metrics._visionpeft_recorded = True
        if self.kind == "ap":
            stats = metrics.update_stats
            key = _tp_key(self.row.primary)

            def update_stats(stat: dict[str, Any]) -> None:
                self.items.append({k: np.asarray(stat[k]) for k in (key, "conf", "pred_cls", "target_cls")})
                self.files.append(str(stat.get("im_name", f"#{len(self.files)}")))
                stats(stat)

            metrics.update_stats = update_stats
        elif self.row.name != "classify":
            self._wrap_dense(metrics)

    def _wrap_dense(self, metrics: Any) -> None:
        """Feed ``update_stats`` one image at a time and keep each image's change of the accumulator."""
        stats = metrics.update_stats
        depth = self.row.name == "depth"
        column = list(metrics.keys).index(self.row.primary_key) if depth else 0

        def state() -> Any:
            acc = metrics._totals if depth else metrics.matrix
            # to the CPU first: MPS has no float64. Ultralytics sums the confusion matrix in float32, exact to 2**24
            # pixels per cell; each image's change is then exact too.
            # clone: .cpu().double() of a float64 CPU tensor (depth's _totals) is the live accumulator itself
            return (None if acc is None else acc.detach().cpu().double().clone(), getattr(metrics, "_count", 0.0))

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

    def save(self, run_dir: Path, split: str, reported: float | None) -> Path | None:
        """Write the records to ``<run_dir>/<split>_images.npz`` if they reproduce ``reported`` (the validator's
        primary metric); otherwise warn and write nothing, so the report falls back to the seed t-interval
        instead of resampling something else (e.g. COCO / LVIS data, whose ``save_json`` path replaces mAP with
        pycocotools' value). Returns the file, or ``None``."""
        from ultralytics.utils import LOGGER

        from ...image_records import records_path, write_records
        from ...report.image_statistics import statistic

        stale = records_path(run_dir, split)
        stale.unlink(missing_ok=True)
        try:
            rec = self.records()
        except ValueError as exc:
            LOGGER.warning(f"visionpeft: no per-image results for {run_dir} ({exc})")
            return None
        value = float(statistic(rec)(np.ones((1, len(rec.files))))[0])
        if reported is None or not np.isclose(value, reported, rtol=1e-6, atol=1e-9):
            LOGGER.warning(f"visionpeft: the per-image results give {rec.metric} {value:.6g}, not the validator's "
                           f"{reported}; not saved (the compare's verdict for this run uses the seed t-interval)")
            return None
        return write_records(run_dir, split, rec)

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
            samples = self._validator.dataloader.dataset.samples  # the loader's order: built unshuffled above
            files = tuple(str(Path(s[0]).relative_to(Path(s[0]).parents[1])) for s in samples[:len(self.items)])
            return ImageRecords("mean", metric, files, {"values": np.asarray(self.items, dtype=np.float64),
                                                        "labels": np.asarray(self.labels, dtype=np.int64)})
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
