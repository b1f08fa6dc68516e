"""The one reader of a run directory: every command that takes ``RUN_DIR`` (``resume``, ``eval``, ``merge``,
``predict``, ``export``) reads it here, with the same checks and messages.

A run directory holds the resolved recipe of its run (``recipe.yaml``, written by ``visionpeft train``); its
``task`` names the engine (:mod:`visionpeft.engines`; ``detection``, the former name of ``detect``, reads as
``detect``). Which other files a command needs (an adapter, ``last.pt``) is the engine's business and checked there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engines import Engine, get_engine
from .errors import ConfigError

__all__ = ["RECIPE_NAME", "RunDir", "read_run_dir", "engine_of_run"]

#: The resolved recipe inside a run directory.
RECIPE_NAME = "recipe.yaml"


@dataclass(frozen=True)
class RunDir:
    """A run directory as read.

    Attributes:
        path: the directory.
        doc: its ``recipe.yaml`` as written (a mapping; not re-validated: ``load_run_recipe`` validates).
        engine: the engine its ``task`` names.
    """

    path: Path
    doc: dict[str, Any]
    engine: Engine

    @property
    def recipe_path(self) -> Path:
        return self.path / RECIPE_NAME

    @property
    def task(self) -> str:
        return self.engine.task


def read_run_dir(run_dir: str | Path, *, task: str | None = None, keys: Sequence[str] = ()) -> RunDir:
    """Read ``run_dir``: it holds a ``recipe.yaml`` mapping of a known task (``task``: of that task) with ``keys``.

    Raises:
        ConfigError: not a run directory (no ``recipe.yaml``), not a mapping, an unknown task, a run of another task
            than ``task``, or a key of ``keys`` missing; each names the file.
    """
    from .safe_yaml import load_yaml_file

    path = Path(run_dir) / RECIPE_NAME
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no recipe.yaml); give a directory written by "
                          "'visionpeft train' or one of the NN-name folders of a compare directory")
    doc = load_yaml_file(path) or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a run's recipe.yaml must be a mapping, got {type(doc).__name__}")
    engine = get_engine(str(doc.get("task", "classification")), where=f"{path}: task")
    if task is not None and engine is not get_engine(task):
        raise ConfigError(f"{path}: not a {task} run (task {doc.get('task')!r})")
    missing = [k for k in keys if k not in doc]
    if missing:
        raise ConfigError(f"{path}: not a {engine.task} run's recipe (no {' / '.join(missing)})")
    return RunDir(Path(run_dir), doc, engine)


def engine_of_run(run_dir: str | Path) -> Engine:
    """The engine of a run directory: the ``task`` its ``recipe.yaml`` records (see :func:`read_run_dir`)."""
    return read_run_dir(run_dir).engine
