"""The ``recipe.yaml`` of a run trained from Python, so ``visionpeft eval / predict / merge / resume`` read it.

``visionpeft train`` writes the run's resolved recipe itself before training. A run started through Ultralytics'
own API (``YOLO(...).train(trainer=PeftDetectionTrainer.configure([...]))``, or ``yolo.train(...)`` after
``visionpeft.apply(yolo, ...)``) has no runner: the trainer writes the recipe the run corresponds to, once its
model and data are set up (rank 0, atomically, only where the run directory has none):

* ``task``, ``strategies``, ``seed``, ``tensorboard``; ``name``: the run name (the save dir's name by default);
  ``output``: the save dir's parent (the run directory is Ultralytics' ``save_dir``);
* ``model``: the ``model`` Ultralytics trained from (the file the YOLO object was loaded from, or its yaml),
  ``data``: the data yaml Ultralytics resolved, ``pretrained`` when one was named; paths made absolute;
* ``ultralytics``: the training arguments the caller set that differ from Ultralytics' defaults, minus the keys
  visionpeft owns (:data:`visionpeft.recipe.ultralytics.OWN_KEYS`), plus the run's values of visionpeft's own
  defaults (``plots``, ``deterministic``, ``verbose``) so a resume trains with the same ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ultralytics.utils import LOGGER, RANK

from ...checkpoint import atomic_write
from ...recipe import recipe_to_dict
from ...recipe.ultralytics import DEFAULT_ULTRALYTICS_ARGS, OWN_KEYS, UltralyticsRecipe
from ...run_dir import RECIPE_NAME

__all__ = ["run_recipe", "write_run_recipe"]


def _absolute(path: Any) -> Any:
    """``path`` made absolute when it names an existing file or folder (an Ultralytics name stays a name)."""
    if not isinstance(path, (str, Path)):
        return path
    return str(Path(path).resolve()) if Path(path).exists() else str(path)


def run_recipe(trainer: Any) -> UltralyticsRecipe:
    """The recipe of ``trainer``'s run (see the module docstring); raises ``ValueError`` if it does not validate."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    args = trainer.args
    given = {k: v for k, v in (trainer.vp_overrides or {}).items()
             if k in DEFAULT_CFG_DICT and k not in OWN_KEYS and v != DEFAULT_CFG_DICT[k]}
    given.update({k: getattr(args, k) for k in DEFAULT_ULTRALYTICS_ARGS})
    pretrained = args.pretrained if isinstance(args.pretrained, (str, Path)) else None
    save_dir = Path(trainer.save_dir).resolve()
    return UltralyticsRecipe(
        task=str(args.task), name=trainer.vp_run_name or save_dir.name, model=_absolute(str(args.model)),
        data=_absolute(str(args.data)), strategies=list(trainer.vp_strategies), seed=int(args.seed),
        output=str(save_dir.parent), pretrained=_absolute(pretrained), ultralytics=given,
        tensorboard=bool(trainer.vp_tensorboard),
    )


def write_run_recipe(trainer: Any) -> None:
    """Write ``<run dir>/recipe.yaml`` unless it exists (``visionpeft train`` wrote its own); rank 0 only.

    A run whose settings make no valid recipe (e.g. a ``.pt`` model with ``pretrained=`` another ``.pt``) trains
    on, with one warning that visionpeft's commands cannot read its directory.
    """
    path = Path(trainer.vp_run_dir) / RECIPE_NAME
    if RANK not in {-1, 0} or path.exists():
        return
    try:
        text = yaml.safe_dump(recipe_to_dict(run_recipe(trainer)), sort_keys=False)
    except ValueError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        LOGGER.warning(f"visionpeft: {path} not written ({first}); 'visionpeft eval/predict/merge/resume' cannot "
                       "read this run directory")
        return
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
