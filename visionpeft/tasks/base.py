"""What every task (classification, detection) provides to the CLI, ``compare`` and the report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..recipe.base import BaseRecipe

# The result records live below the tasks (the report reads them too); the runners know them by this module.
from ..results import EPOCH_BASE, GridPoint, RunResult, StrategyRuns

__all__ = ["EPOCH_BASE", "RunResult", "GridPoint", "StrategyRuns", "TaskRunner", "load_run_recipe"]


@runtime_checkable
class TaskRunner(Protocol):
    """One task's training, evaluation and merge, driven by a recipe.

    ``train`` writes the run-dir layout shared by every task: ``recipe.yaml`` (resolved),
    ``adapter/adapter.safetensors`` + ``adapter/adapter.json``, ``metrics.json``, ``plan.json`` and
    TensorBoard event files in the run directory itself (when the recipe enables TensorBoard).
    """

    primary_metric: str
    metric_names: tuple[str, ...]

    def train(self, recipe: BaseRecipe, strategies: list[dict[str, Any]], run_dir: Path, run_name: str) -> RunResult:
        """Train ``strategies`` with ``recipe``'s settings into ``run_dir``."""
        ...

    def resume(self, run_dir: Path, overrides: Sequence[str] = ()) -> RunResult:
        """Continue a killed run in ``run_dir`` from its last checkpoint (never a silent restart)."""
        ...

    def evaluate(self, run_dir: Path, split: str, save_examples: bool = False) -> dict[str, float]:
        """Rebuild the run's model from its adapter and evaluate it on ``split`` as training validated it;
        ``save_examples``: also write per-example results (:mod:`visionpeft.examples`,
        :mod:`visionpeft.image_records`) where the task can."""
        ...

    def merge(self, run_dir: Path, out: Path) -> Path:
        """Write a plain model file (no visionpeft needed to load it); return its path."""
        ...

    def has_split(self, recipe: Any, split: str) -> bool:
        """Whether ``recipe``'s data has a ``split`` (``test``) a finished run can be evaluated on."""
        ...

    @property
    def image_suffixes(self) -> frozenset[str]:
        """The image files its image reader reads (lower-case suffixes with the dot): what ``predict`` accepts."""
        ...

    def load_model(self, run_dir: Path) -> Any:
        """The run's adapted model (best epoch), in eval mode (``visionpeft export``)."""
        ...

    def val_curve(self, run_dir: Path) -> list[list[float]]:
        """``[[elapsed_seconds, primary validation metric], ...]`` per epoch of a finished run (wall time since
        training started, validation included)."""
        ...


def load_run_recipe(run_dir: Path, overrides: Sequence[str] = ()) -> BaseRecipe:
    """The resolved recipe a run directory recorded (``recipe.yaml``), with ``key=value`` overrides applied."""
    from ..recipe import load_recipe
    from ..run_dir import read_run_dir

    return load_recipe(read_run_dir(run_dir).recipe_path, overrides)
