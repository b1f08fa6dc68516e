"""Classification: our own small training loop around a timm model (see ``runner.py``)."""

from .runner import ClassificationTask

TASK = ClassificationTask()

__all__ = ["TASK", "ClassificationTask"]
