"""What a training run and a compare produce: :class:`RunResult` (one run, ``metrics.json``), :class:`GridPoint`
(one learning rate of a sweep) and :class:`StrategyRuns` (every seed of one compare entry).

Records, not behaviour: the task runners write them and the report reads them, so they sit below both layers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["EPOCH_BASE", "RunResult", "GridPoint", "StrategyRuns"]


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
        peak_mem_mb: one training step's memory footprint of the model, MiB (see :mod:`visionpeft.profiling`).
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
