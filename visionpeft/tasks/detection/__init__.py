"""Detection: Ultralytics YOLO fine-tuned with visionpeft strategies, Ultralytics being the engine.

``TASK`` is the runner ``visionpeft.tasks.get_task("detection")`` returns. Importing this package does not
import Ultralytics; the trainer, data checks and merge modules do, when used.
"""

from .runner import DetectionTask

__all__ = ["TASK", "DetectionTask"]

TASK = DetectionTask()
