"""Run loggers (TensorBoard) and the HParams vocabulary shared by every task."""

from .hparams import HPARAMS, task_metrics
from .tensorboard import RunLogger

__all__ = ["RunLogger", "HPARAMS", "task_metrics"]
