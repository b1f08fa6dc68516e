"""The compare protocol: learning-rate choice on validation, several seeds, test-split evaluation.

For every compare run (``full`` first):

1. **Learning rate** (only for runs listed in ``lr_grid``): each rate trains once with the first seed; the rate
   whose best epoch has the highest *validation* primary metric is kept (ties: the first listed). The rate is set
   on every strategy entry of the run except ``head`` (the classifier keeps ``optim.head_lr``).
2. **Seeds**: the run trains with seeds ``seed, seed + 1, ..., seed + seeds - 1`` at that rate; the first seed's
   run *is* the chosen grid run (same settings, same seed), not trained twice.
3. **Test split**: when the data has one, each seed's kept checkpoint (its best validation epoch) is evaluated
   on ``test`` with the run's own evaluation settings; nothing is ever chosen on test.
4. **Validation curve**: each seed run's per-epoch ``[elapsed seconds, validation metric]`` for time-to-accuracy.

Run directories: ``NN-<run>/`` as before when ``seeds: 1`` and the run has no grid; otherwise
``NN-<run>/lr-<rate>/`` for grid points and ``NN-<run>/seed-<seed>/`` for the other seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import GridPoint, RunResult, StrategyRuns, TaskRunner
from .compare_progress import CompareProgress, count_trainings
from .distributed import is_main

__all__ = ["with_lr", "run_protocol", "seeds_of"]


def seeds_of(recipe: Any) -> list[int]:
    """The compare's seeds: ``recipe.seed`` and the ``recipe.seeds - 1`` following integers."""
    return [int(recipe.seed) + k for k in range(int(getattr(recipe, "seeds", 1)))]


def with_lr(strategies: Sequence[Mapping[str, Any]], lr: float | None) -> list[dict[str, Any]]:
    """A copy of ``strategies`` with ``lr`` set on every entry but ``head`` (``None``: unchanged)."""
    return [dict(e) if lr is None or e["method"] == "head" else {**e, "lr": float(lr)} for e in strategies]


def _lr_dir(lr: float) -> str:
    return f"lr-{lr:g}"


def _train(task: TaskRunner, recipe: Any, strategies: list[dict[str, Any]], run_dir: Path, name: str,
           seed: int, progress: CompareProgress | None = None, detail: str = "") -> RunResult:
    """One training run of ``strategies`` with ``seed`` (everything else from ``recipe``)."""
    seeded = recipe if recipe.seed == seed else recipe.model_copy(update={"seed": seed})
    if progress is not None:
        progress.start(name, detail or f"seed {seed}")
    result = task.train(seeded, strategies, run_dir, name)
    if progress is not None:
        progress.done()
    result.extra["seed"] = seed
    return result


def _sweep(task: TaskRunner, recipe: Any, name: str, strategies: list[dict[str, Any]], grid: list[float],
           base: Path, seed: int, progress: CompareProgress | None = None
           ) -> tuple[float, list[RunResult], list[GridPoint]]:
    """Train every rate of ``grid`` with ``seed``; return (chosen rate, its runs (chosen first), grid points)."""
    points: list[GridPoint] = []
    results: list[RunResult] = []
    for lr in grid:
        res = _train(task, recipe, with_lr(strategies, lr), base / _lr_dir(lr), name, seed, progress,
                     f"lr {lr:g}, seed {seed}")
        res.extra["lr"] = lr
        results.append(res)
        points.append(GridPoint(lr=lr, val_metric=res.metrics.get(task.primary_metric),
                                train_seconds=res.train_seconds, run_dir=Path(res.run_dir)))
    scores = [p.val_metric if p.val_metric is not None else float("-inf") for p in points]
    best = scores.index(max(scores))
    return grid[best], [results[best], *results[:best], *results[best + 1:]], points


def _finish(task: TaskRunner, result: RunResult, test: bool) -> RunResult:
    """Attach the validation curve and (when the data has one) the test metrics of the kept checkpoint."""
    result.extra["val_curve"] = task.val_curve(Path(result.run_dir))
    if test:
        metrics = task.evaluate(Path(result.run_dir), "test")
        result.extra["test_metrics"] = {k: float(metrics[k]) for k in task.metric_names if k in metrics}
    return result


def run_protocol(task: TaskRunner, recipe: Any, runs: Mapping[str, list[dict[str, Any]]],
                 compare_dir: Path) -> list[StrategyRuns]:
    """Train every compare run under the protocol (module docstring); one :class:`StrategyRuns` per run.

    Args:
        task: the task runner (``train``, ``evaluate``, ``has_split``, ``val_curve``).
        recipe: the compare recipe (``seed``, ``seeds``, ``lr_grid``).
        runs: run name -> strategy list, ``full`` first (``recipe.compare_runs()``).
        compare_dir: the compare directory (run folders go inside).
    """
    seeds = seeds_of(recipe)
    grids = getattr(recipe, "lr_grid", None) or {}
    test = task.has_split(recipe, "test")
    progress = CompareProgress(count_trainings(runs, seeds, grids), enabled=is_main())
    out: list[StrategyRuns] = []
    for i, (name, strategies) in enumerate(runs.items()):
        base = Path(compare_dir) / f"{i:02d}-{_slug(name)}"
        flat = len(seeds) == 1 and name not in grids
        entry = StrategyRuns(name=name, runs=[])
        first: RunResult | None = None
        if name in grids:
            entry.lr, swept, entry.grid = _sweep(task, recipe, name, strategies, grids[name], base, seeds[0],
                                                 progress)
            first, entry.grid_runs = swept[0], swept[1:]
        for k, seed in enumerate(seeds):
            if k == 0 and first is not None:
                result = first
            else:
                run_dir = base if flat else base / f"seed-{seed}"
                result = _train(task, recipe, with_lr(strategies, entry.lr), run_dir, name, seed, progress)
            result.extra["lr"] = entry.lr
            entry.runs.append(_finish(task, result, test))
        out.append(entry)
    return out


def _slug(name: str) -> str:
    from .compare import slug

    return slug(name)
