"""Tasks: the training/evaluation engines behind ``train``, ``compare``, ``eval`` and ``merge``."""

from __future__ import annotations

import importlib

from ..errors import ConfigError, closest
from .base import RunResult, TaskRunner

__all__ = ["TASKS", "get_task", "RunResult", "TaskRunner"]

#: task name -> ``"module:attribute"`` of its runner (imported lazily: detection pulls in Ultralytics).
TASKS: dict[str, str] = {
    "classification": "visionpeft.tasks.classification:TASK",
    "detection": "visionpeft.tasks.detection:TASK",
}


def get_task(name: str) -> TaskRunner:
    """The runner of task ``name``."""
    if name not in TASKS:
        hint = closest(name, TASKS, n=1)
        raise ConfigError(f"unknown task {name!r}; available: {sorted(TASKS)}"
                          + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    module, _, attr = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
