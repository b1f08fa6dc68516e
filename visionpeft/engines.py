"""The one registry of engines: an engine is a backend x a task, the unit of extension.

A recipe's ``task`` key names an engine. The engine says which recipe schema validates the recipe, which runner
trains / resumes / evaluates / merges its runs, which backend builds its model, and (Ultralytics engines) which
Ultralytics task it drives. The CLI, ``compare``, the recipe loader and the run-directory reader look engines up
here and nowhere else (``visionpeft.tasks.TASKS`` and ``visionpeft.recipe.TASK_SCHEMAS`` are views of this table).

Adding an Ultralytics task is one :class:`Engine` line below plus, if its label files differ from boxes and
polygons, a label rule in ``visionpeft/tasks/detection/data.py`` (see ``docs/architecture.md``).

Nothing is imported at import time: schemas and runners are ``"module:attribute"`` strings, imported on use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, closest

__all__ = ["Engine", "ENGINES", "get_engine", "engine_of_run", "load_attr", "ULTRALYTICS_TASKS"]


@dataclass(frozen=True)
class Engine:
    """One backend x task.

    Attributes:
        task: the recipe's ``task`` value (``classification``, ``detection``, ``segment``...).
        schema: ``"module:Class"`` of the recipe schema (a :class:`~visionpeft.recipe.base.BaseRecipe`).
        runner: ``"module:attribute"`` of its :class:`~visionpeft.tasks.base.TaskRunner` instance.
        backend: ``"timm"`` or ``"ultralytics"``: which module of ``visionpeft.backends`` builds its models.
        ultralytics_task: Ultralytics' own task name (``detect``, ``segment``, ``pose``, ``obb``, ``classify``)
            for Ultralytics engines, ``None`` otherwise.
    """

    task: str
    schema: str
    runner: str
    backend: str
    ultralytics_task: str | None = None


_UL_SCHEMA = "visionpeft.recipe.detection:{}"
_UL_RUNNER = "visionpeft.tasks.detection:ENGINE_RUNNERS.{}"

#: task name -> engine. Recipes say ``task: <key>``.
ENGINES: dict[str, Engine] = {
    "classification": Engine("classification", "visionpeft.recipe.classification:ClassificationRecipe",
                             "visionpeft.tasks.classification:TASK", "timm"),
    "detection": Engine("detection", _UL_SCHEMA.format("DetectionRecipe"), "visionpeft.tasks.detection:TASK",
                        "ultralytics", "detect"),
    "segment": Engine("segment", _UL_SCHEMA.format("SegmentRecipe"), _UL_RUNNER.format("segment"), "ultralytics",
                      "segment"),
    "pose": Engine("pose", _UL_SCHEMA.format("PoseRecipe"), _UL_RUNNER.format("pose"), "ultralytics", "pose"),
    "obb": Engine("obb", _UL_SCHEMA.format("OBBRecipe"), _UL_RUNNER.format("obb"), "ultralytics", "obb"),
    "classify": Engine("classify", _UL_SCHEMA.format("ClassifyRecipe"), _UL_RUNNER.format("classify"),
                       "ultralytics", "classify"),
}

#: Ultralytics task name -> the engine (recipe task) that drives it.
ULTRALYTICS_TASKS: dict[str, str] = {e.ultralytics_task: name for name, e in ENGINES.items() if e.ultralytics_task}


def get_engine(task: str, where: str = "task") -> Engine:
    """The engine registered for ``task``.

    Raises:
        ConfigError: unknown task, naming the available ones and the closest match.
    """
    if task not in ENGINES:
        alias = ULTRALYTICS_TASKS.get(str(task))
        hint = [alias] if alias else closest(str(task), ENGINES, n=1)
        raise ConfigError(f"{where}: unknown task {task!r}; available: {sorted(ENGINES)}"
                          + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return ENGINES[task]


def load_attr(spec: str, what: str) -> Any:
    """Import ``"module:attr"`` (``attr`` may be dotted: ``"pkg.mod:TABLE.key"`` reads ``TABLE["key"]``)."""
    module, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        head, *rest = attr.split(".")
        obj = getattr(obj, head)
        for key in rest:
            obj = obj[key]
        return obj
    except (ImportError, AttributeError, KeyError) as exc:
        raise ConfigError(f"{what} {spec} is not available: {exc}") from exc


def engine_of_run(run_dir: str | Path) -> Engine:
    """The engine of a run directory: the ``task`` its resolved ``recipe.yaml`` records.

    Raises:
        ConfigError: no ``recipe.yaml`` (not a run directory), not a mapping, or an unknown task.
    """
    from .safe_yaml import load_yaml_file

    path = Path(run_dir) / "recipe.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no recipe.yaml); give a directory written by "
                          "'visionpeft train' or one of the NN-name folders of a compare directory")
    doc = load_yaml_file(path) or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a run's recipe.yaml must be a mapping, got {type(doc).__name__}")
    return get_engine(str(doc.get("task", "classification")), where=f"{path}: task")
