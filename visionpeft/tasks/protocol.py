"""The compare protocol: learning-rate choice on validation, several seeds, test-split evaluation.

For every compare run (``full`` first):

1. **Learning rate** (only for runs listed in ``lr_grid``): each rate trains once with the first seed; the rate
   whose best epoch has the highest *validation* primary metric is kept (ties: the first listed). The rate is set
   on every strategy entry of the run except ``head`` (the classifier keeps ``optim.head_lr``). ``auto``
   (:func:`lr_grids`) makes the grid the run's own rate times :data:`AUTO_FACTORS`. Every run records where its
   rate came from (``StrategyRuns.lr_source``: ``auto``, ``lr_grid``, ``given`` or ``default``).
2. **Seeds**: the run trains with seeds ``seed, seed + 1, ..., seed + seeds - 1`` at that rate; the first seed's
   run *is* the chosen grid run (same settings, same seed), not trained twice.
3. **Test split**: when the data has one, each seed's kept checkpoint (its best validation epoch) is evaluated
   on ``test`` with the run's own evaluation settings; nothing is ever chosen on test. Tasks that can save
   per-example results do, for the report's paired bootstrap (classification: ``test_examples.json``;
   Ultralytics tasks: ``test_images.npz``, what the validator scored per image).
4. **Validation curve**: each seed run's per-epoch ``[elapsed seconds, validation metric]`` for time-to-accuracy.

Run directories: ``NN-<run>/`` as before when ``seeds: 1`` and the run has no grid; otherwise
``NN-<run>/lr-<rate>/`` for grid points and ``NN-<run>/seed-<seed>/`` for the other seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..optim_settings import default_lr
from .base import GridPoint, RunResult, StrategyRuns, TaskRunner
from .compare_progress import CompareProgress, count_trainings
from .distributed import is_main

__all__ = ["with_lr", "run_protocol", "seeds_of", "lr_grids", "lr_source", "AUTO_FACTORS"]

#: ``lr_grid: auto``: the run's own rate times these. Why this grid: in the project's measured grids a default that
#: was off was mostly too low (ViT-Tiny flowers, ``docs/benchmarks.md``: LoRA and DoRA 3x, the head 4x, LoKr and
#: AdaptFormer 10x at the grid's top edge; EfficientNet full fine-tuning 10x in the per-method study), less often
#: too high (EfficientNet LoKr 0.3x; full fine-tuning of ViT-Tiny on hymenoptera 0.3x, a tie), so the grid reaches a
#: decade up and keeps one step down. Half-decade steps: accuracy changed by up to 0.13 between neighbouring points
#: of those grids, so a decade grid would be too coarse. Four trainings of the first seed per run
#: (``sweep_seconds`` in the report).
AUTO_FACTORS: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0)


def seeds_of(recipe: Any) -> list[int]:
    """The compare's seeds: ``recipe.seed`` and the ``recipe.seeds - 1`` following integers."""
    return [int(recipe.seed) + k for k in range(int(getattr(recipe, "seeds", 1)))]


def with_lr(strategies: Sequence[Mapping[str, Any]], lr: float | None) -> list[dict[str, Any]]:
    """A copy of ``strategies`` with ``lr`` set on every entry but ``head`` (``None``: unchanged)."""
    return [dict(e) if lr is None or e["method"] == "head" else {**e, "lr": float(lr)} for e in strategies]


def _own_rate(recipe: Any, strategies: Sequence[Mapping[str, Any]], name: str) -> float:
    """The rate a run trains its non-head entries at without a grid (the highest): entry ``lr``, else the recipe's
    (classification: ``optim.lr``, else the method's default; Ultralytics: ``ultralytics.lr0``)."""
    optim = getattr(recipe, "optim", None)
    if optim is not None:
        def fallback(method: str) -> float:
            return float(optim.lr or default_lr(method, optim.name))
    else:
        def fallback(method: str) -> float:  # only asked for entries without their own lr
            return _ultralytics_lr0(recipe, name)
    return max(float(e.get("lr") or fallback(e["method"])) for e in strategies if e["method"] != "head")


def lr_grids(recipe: Any, runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, tuple[list[float], str]]:
    """Every run's learning-rate grid and its source: ``{run: (rates, "lr_grid" | "auto")}``.

    ``lr_grid: auto`` covers every run that trains more than the head; ``{run: auto}`` one run. An ``auto`` grid
    is the run's own rate times :data:`AUTO_FACTORS`, rounded to 3 significant digits: classification, the entry
    ``lr``, else ``optim.lr``, else the method's default; Ultralytics engines, the entry ``lr``, else
    ``ultralytics.lr0`` (no per-method defaults there: every group trains at ``lr0``; the per-method study in
    ``docs/benchmarks.md`` found adapters on BCCD best at 3-10x the rate full fine-tuning wants, which the grid's
    x3 and x10 points reach).

    Raises:
        ConfigError: ``auto`` on an Ultralytics recipe with ``optimizer: auto`` (Ultralytics then picks the
            optimizer and ``lr0`` itself, so there is no rate to centre on): set the optimizer or list the rates.
    """
    spec = getattr(recipe, "lr_grid", None) or {}
    if spec == "auto":
        spec = {k: "auto" for k, v in runs.items() if any(e["method"] != "head" for e in v)}
    out: dict[str, tuple[list[float], str]] = {}
    for name, rates in spec.items():
        if rates != "auto":
            out[name] = (list(rates), "lr_grid")
            continue
        own = _own_rate(recipe, runs[name], name)
        out[name] = ([float(f"{own * f:.3g}") for f in AUTO_FACTORS], "auto")
    return out


def _ultralytics_lr0(recipe: Any, name: str) -> float:
    """``ultralytics.lr0`` (or Ultralytics' default), refused where ``optimizer: auto`` would ignore it."""
    from ..recipe.ultralytics import ultralytics_arg

    args = dict(getattr(recipe, "ultralytics", None) or {})
    if str(ultralytics_arg(args, "optimizer")).lower() == "auto":
        raise ConfigError(f"lr_grid.{name}: auto centres the grid on ultralytics.lr0, which optimizer=auto ignores "
                          "(Ultralytics then picks the optimizer and its rate itself); set the optimizer, e.g. "
                          "ultralytics.optimizer=AdamW ultralytics.lr0=0.001, or list the rates, e.g. lr_grid: {"
                          + name + ": [0.001, 0.003, 0.01]}")
    return float(ultralytics_arg(args, "lr0"))


def lr_source(recipe: Any, strategies: Sequence[Mapping[str, Any]]) -> str:
    """``given`` when a non-head entry (or the recipe's ``optim.lr``) sets the rate, else ``default``."""
    optim = getattr(recipe, "optim", None)
    given = any(e.get("lr") is not None for e in strategies if e["method"] != "head")
    return "given" if given or (optim is not None and optim.lr is not None) else "default"


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
        metrics = task.evaluate(Path(result.run_dir), "test", save_examples=True)
        result.extra["test_metrics"] = {k: float(metrics[k]) for k in task.metric_names if k in metrics}
    return result


def run_protocol(task: TaskRunner, recipe: Any, runs: Mapping[str, list[dict[str, Any]]],
                 compare_dir: Path) -> list[StrategyRuns]:
    """Train every compare run under the protocol (module docstring); one :class:`StrategyRuns` per run.

    Args:
        task: the task runner (``train``, ``evaluate``, ``has_split``, ``val_curve``).
        recipe: the compare recipe (``seed``, ``seeds``, ``lr_grid``; ``optim`` for ``auto``).
        runs: run name -> strategy list, ``full`` first (``recipe.compare_runs()``).
        compare_dir: the compare directory (run folders go inside).
    """
    seeds = seeds_of(recipe)
    grids = lr_grids(recipe, runs)
    test = task.has_split(recipe, "test")
    progress = CompareProgress(count_trainings(runs, seeds, {n: g[0] for n, g in grids.items()}), enabled=is_main())
    out: list[StrategyRuns] = []
    for i, (name, strategies) in enumerate(runs.items()):
        base = Path(compare_dir) / f"{i:02d}-{_slug(name)}"
        flat = len(seeds) == 1 and name not in grids
        entry = StrategyRuns(name=name, runs=[], lr_source=grids[name][1] if name in grids else
                             lr_source(recipe, strategies))
        first: RunResult | None = None
        if name in grids:
            entry.lr, swept, entry.grid = _sweep(task, recipe, name, strategies, grids[name][0], base, seeds[0],
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
    from ..outputs import slug

    return slug(name)
