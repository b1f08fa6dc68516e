"""Former name of :mod:`visionpeft.tasks.ultralytics`, kept for code written against it.

``docs/detection.md`` showed ``from visionpeft.tasks.detection.trainer import PeftDetectionTrainer`` for training
from Python, so that path keeps working (:mod:`.trainer`); nothing persisted refers to this package (checkpoints
pickle model and strategy classes only, see :mod:`visionpeft.backends.safe_load`).
"""
