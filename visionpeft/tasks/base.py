"""What every task (classification, detection) provides to the CLI, ``compare`` and the report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..recipe.base import BaseRecipe

__all__ = ["EPOCH_BASE", "RunResult", "GridPoint", "StrategyRuns", "TaskRunner", "load_run_recipe"]


#: ``extra["best_epoch"]`` counts epochs from 1, as the training log and the report do; ``extra["epoch_base"]``
#: records it, and :meth:`RunResult.from_dict` converts results written before (counted from 0, no marker).
EPOCH_BASE = 1


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
        """Inverse of :meth:`to_dict`; other keys (a run's ``metrics.json`` also holds ``history`` and
        ``best_metrics``) are ignored."""
        names = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        data["run_dir"] = Path(data["run_dir"])
        extra = dict(data.get("extra") or {})
        if extra.get("best_epoch") is not None and extra.get("epoch_base") != EPOCH_BASE:
            extra["best_epoch"] = int(extra["best_epoch"]) + 1  # an older run directory: counted from 0
        if "best_epoch" in extra:
            extra["epoch_base"] = EPOCH_BASE
        data["extra"] = extra
        return cls(**data)

    def save(self, path: Path) -> None:
        """Write ``metrics.json``-style JSON."""
        path.write_text(json.dumps(self.to_dict(), indent=2))


@dataclass
class GridPoint:
    """One learning rate of a compare run's ``lr_grid``, trained once (first seed).

    Attributes:
        lr: the rate set on the run's strategy entries (``head`` keeps ``optim.head_lr``).
        val_metric: the best epoch's validation value of the task's primary metric (the selection criterion).
        train_seconds: the run's training wall time (counted in the report's ``sweep_seconds``).
        run_dir: where it trained.
    """

    lr: float
    val_metric: float | None
    train_seconds: float
    run_dir: Path


@dataclass
class StrategyRuns:
    """Every run of one compare entry: its seeds (and its learning-rate sweep).

    Attributes:
        name: the compare run name (``full``, ``lora_r8``...).
        runs: one result per seed, in seed order (``extra["seed"]``, ``extra["test_metrics"]`` when the data has
            a test split, ``extra["val_curve"]``: ``[[elapsed_seconds, primary metric], ...]`` per epoch).
        grid: the sweep, empty without an ``lr_grid`` entry; the first seed's run is the chosen grid point.
        lr: the chosen rate (``None``: the entries' own rates or the method defaults).
        grid_runs: the grid points' runs that are not also a seed run (rates not chosen).
        lr_source: where the rate came from: ``auto`` (chosen from the grid around the run's own rate),
            ``lr_grid`` (chosen from the listed rates), ``given`` (an entry's ``lr`` or ``optim.lr``) or
            ``default`` (each method's default; Ultralytics' ``lr0`` for its engines).
    """

    name: str
    runs: list[RunResult]
    grid: list[GridPoint] = field(default_factory=list)
    lr: float | None = None
    grid_runs: list[RunResult] = field(default_factory=list)
    lr_source: str = "default"

    @property
    def sweep_seconds(self) -> float:
        """Training time of every grid point (0 without a sweep)."""
        return sum(p.train_seconds for p in self.grid)

    @property
    def compute_seconds(self) -> float:
        """All training time this entry cost: the sweep plus the seeds not taken from it."""
        taken = {str(p.run_dir) for p in self.grid}
        return self.sweep_seconds + sum(r.train_seconds for r in self.runs if str(r.run_dir) not in taken)


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
        ``save_examples``: also write per-example results (:mod:`visionpeft.tasks.examples`) where the task can."""
        ...

    def merge(self, run_dir: Path, out: Path) -> Path:
        """Write a plain model file (no visionpeft needed to load it); return its path."""
        ...

    def has_split(self, recipe: Any, split: str) -> bool:
        """Whether ``recipe``'s data has a ``split`` (``test``) a finished run can be evaluated on."""
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
    from ..errors import ConfigError
    from ..recipe import load_recipe

    path = Path(run_dir) / "recipe.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no recipe.yaml); give a directory written by "
                          "'visionpeft train' or one of the NN-name folders of a compare directory")
    return load_recipe(path, overrides)
