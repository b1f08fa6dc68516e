"""Tasks: the training/evaluation engines behind ``train``, ``compare``, ``eval`` and ``merge``.

The runners are registered in :mod:`visionpeft.engines` (one table for schemas, runners and backends);
:data:`TASKS` is that table's view of task name -> runner.
"""

from __future__ import annotations

from ..engines import ENGINES, get_engine, load_attr
from .base import RunResult, TaskRunner

__all__ = ["TASKS", "get_task", "RunResult", "TaskRunner"]

#: task name -> ``"module:attribute"`` of its runner (a view of :data:`visionpeft.engines.ENGINES`).
TASKS: dict[str, str] = {name: engine.runner for name, engine in ENGINES.items()}


def get_task(name: str) -> TaskRunner:
    """The runner of task ``name`` (imported lazily: Ultralytics engines pull in Ultralytics)."""
    engine = get_engine(name)
    return load_attr(engine.runner, f"task: the {name!r} runner")
