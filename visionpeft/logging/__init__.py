"""Run loggers (TensorBoard)."""

from .tensorboard import RunLogger

__all__ = ["RunLogger"]
