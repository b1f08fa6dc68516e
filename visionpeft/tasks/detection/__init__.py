"""Ultralytics engines: YOLO / RT-DETR models fine-tuned with visionpeft strategies, Ultralytics being the engine.

``TASK`` is the runner ``visionpeft.tasks.get_task("detection")`` returns; :data:`ENGINE_RUNNERS` holds one runner
per Ultralytics engine of :mod:`visionpeft.engines` (``detection``, ``segment``, ``pose``, ``obb``, ``classify``).
Importing this package does not import Ultralytics; the trainer, data checks and merge modules do, when used.
"""

from .runner import DetectionTask, UltralyticsTask

__all__ = ["TASK", "ENGINE_RUNNERS", "DetectionTask", "UltralyticsTask"]

TASK = UltralyticsTask("detection")

#: engine name -> its runner.
ENGINE_RUNNERS: dict[str, UltralyticsTask] = {
    "detection": TASK,
    **{name: UltralyticsTask(name) for name in ("segment", "pose", "obb", "classify")},
}
