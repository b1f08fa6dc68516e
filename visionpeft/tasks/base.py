"""What every task (classification, detection) provides to the CLI, ``compare`` and the report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..recipe.base import BaseRecipe

__all__ = ["RunResult", "TaskRunner", "load_run_recipe"]


@dataclass
class RunResult:
    """The outcome of one training run (one strategy list), as the compare report needs it.

    Attributes:
        strategy: run name (``full``, ``lora``, ...).
        trainable_params / total_params / trainable_pct: from the trainability plan.
        metrics: final validation metrics of the best checkpoint, e.g. ``{"top1": 0.91, "top5": 0.99}``.
        peak_mem_mb: peak accelerator memory (CUDA) or peak resident memory growth (CPU) during training.
        train_img_per_s: training throughput over the whole run.
        train_seconds: wall time of the training loop (validation included).
        adapter_bytes: size of the saved adapter file.
        step_time_s: mean wall time of one optimizer step.
        run_dir: where the run wrote its files.
    """

    strategy: str
    trainable_params: int
    total_params: int
    trainable_pct: float
    metrics: dict[str, float]
    peak_mem_mb: float
    train_img_per_s: float
    train_seconds: float
    adapter_bytes: int
    step_time_s: float
    run_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``run_dir`` as a string)."""
        out = asdict(self)
        out["run_dir"] = str(self.run_dir)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["run_dir"] = Path(data["run_dir"])
        return cls(**data)

    def save(self, path: Path) -> None:
        """Write ``metrics.json``-style JSON."""
        path.write_text(json.dumps(self.to_dict(), indent=2))


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

    def evaluate(self, run_dir: Path, split: str) -> dict[str, float]:
        """Rebuild the run's model from its adapter and evaluate it on ``split`` as training validated it."""
        ...

    def merge(self, run_dir: Path, out: Path) -> Path:
        """Write a plain model file (no visionpeft needed to load it); return its path."""
        ...


def load_run_recipe(run_dir: Path, overrides: Sequence[str] = ()) -> BaseRecipe:
    """The resolved recipe a run directory recorded (``recipe.yaml``), with ``key=value`` overrides applied."""
    from ..errors import ConfigError
    from ..recipe import load_recipe

    path = Path(run_dir) / "recipe.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no recipe.yaml); give a directory written by "
                          "'visionpeft train' or one of the NN-name folders of a compare directory")
    return load_recipe(path, overrides)
