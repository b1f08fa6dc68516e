"""Run loggers (TensorBoard) and the HParams vocabulary shared by every task."""

from .hparams import HPARAMS, METRICS
from .tensorboard import RunLogger

__all__ = ["RunLogger", "HPARAMS", "METRICS"]
