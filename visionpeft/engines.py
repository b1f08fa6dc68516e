"""The one registry of engines: an engine is a backend x a task, the unit of extension.

A recipe's ``task`` key names an engine. The engine says which recipe schema validates the recipe, which runner
trains / resumes / evaluates / merges its runs, which backend builds its model, and (Ultralytics engines) which
Ultralytics task it drives. The CLI, ``compare``, the recipe loader and the run-directory reader look engines up
here and nowhere else (``visionpeft.tasks.TASKS`` and ``visionpeft.recipe.TASK_SCHEMAS`` are views of this table).

The Ultralytics engines are made from the rows of :data:`visionpeft.ultralytics_tasks.TASKS` (one per task,
Ultralytics' task names): adding an Ultralytics task adds a row there, not a line here (``docs/architecture.md``).

Nothing is imported at import time: schemas and runners are ``"module:attribute"`` strings, imported on use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from . import ultralytics_tasks
from .errors import ConfigError, closest

__all__ = ["Engine", "ENGINES", "get_engine", "load_attr", "ULTRALYTICS_ATTACH"]


@dataclass(frozen=True)
class Engine:
    """One backend x task.

    Attributes:
        task: the recipe's ``task`` value (``classification``, ``detect``, ``segment``...).
        schema: ``"module:Class"`` of the recipe schema (a :class:`~visionpeft.recipe.base.BaseRecipe`).
        runner: ``"module:attribute"`` of its :class:`~visionpeft.tasks.base.TaskRunner` instance.
        backend: ``"timm"`` or ``"ultralytics"``: which module of ``visionpeft.backends`` builds its models.
        ultralytics_task: Ultralytics' own task name (a row of :data:`visionpeft.ultralytics_tasks.TASKS`) for
            Ultralytics engines, ``None`` otherwise.
        predict: ``"module:function"`` that predicts with a run's model (``visionpeft predict``).
    """

    task: str
    schema: str
    runner: str
    backend: str
    ultralytics_task: str | None = None
    predict: str = ""


def _engines() -> dict[str, Engine]:
    """timm classification, then one engine per row of :data:`visionpeft.ultralytics_tasks.TASKS`."""
    out = {"classification": Engine("classification", "visionpeft.recipe.classification:ClassificationRecipe",
                                    "visionpeft.tasks.classification:TASK", "timm",
                                    predict="visionpeft.tasks.classification.predict:predict_images")}
    for name in ultralytics_tasks.TASKS:
        out[name] = Engine(name, "visionpeft.recipe.ultralytics:UltralyticsRecipe",
                           f"visionpeft.tasks.ultralytics:RUNNERS.{name}", "ultralytics", name,
                           predict="visionpeft.tasks.ultralytics.predict:predict_images")
    return out


#: task name -> engine. Recipes say ``task: <key>`` (``detection``, the former name of ``detect``, still reads).
ENGINES: dict[str, Engine] = _engines()


def get_engine(task: str, where: str = "task") -> Engine:
    """The engine registered for ``task``.

    Raises:
        ConfigError: unknown task, naming the available ones and the closest match.
    """
    name = ultralytics_tasks.canonical(str(task))
    if name not in ENGINES:
        hint = closest(str(task), ENGINES, n=1)
        raise ConfigError(f"{where}: unknown task {task!r}; available: {sorted(ENGINES)}"
                          + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return ENGINES[name]


#: ``"module:function"`` that :func:`visionpeft.apply` calls before adapting the network of an Ultralytics YOLO object,
#: so the object's own ``train()`` trains the adapted model (``visionpeft.tasks.ultralytics.attached``).
ULTRALYTICS_ATTACH = "visionpeft.tasks.ultralytics.attached:prepare"


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
