"""``visionpeft compare``: full fine-tuning plus each listed strategy, same recipe, then the report."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from . import get_task
from .base import RunResult
from .distributed import barrier, broadcast_object, is_main

__all__ = ["run_compare", "new_run_dir", "slug"]


def slug(name: str) -> str:
    """A file-system-safe version of a run name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"


def new_run_dir(recipe: Any, suffix: str = "") -> Path:
    """``<output>/<name><suffix>-<timestamp>``, made unique with ``-2``, ``-3``... if it exists."""
    base = Path(recipe.output) / f"{slug(recipe.name)}{suffix}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 2
    while path.exists():
        path = base.with_name(f"{base.name}-{n}")
        n += 1
    return Path(broadcast_object(str(path)))  # every DDP rank must use rank 0's choice


def run_compare(recipe: Any, compare_dir: Path | None = None) -> Path:
    """Train ``full`` then every run of ``recipe.compare_runs()`` and write the report; return the directory.

    Every run uses the recipe's data, epochs, seed and schedule; only the strategy list differs, and with it
    the learning rates (each method's own; a single ``optim.lr`` for methods with different defaults is refused).
    """
    runs = recipe.compare_runs()
    optim = getattr(recipe, "optim", None)  # classification; detection runs on Ultralytics' lr0
    if optim is not None:
        from ..errors import ConfigError
        from ..optim_settings import shared_lr_problem

        problem = shared_lr_problem(runs, optim.lr)
        if problem:
            raise ConfigError(problem)
    task = get_task(recipe.task)
    compare_dir = Path(compare_dir) if compare_dir else new_run_dir(recipe, "-compare")
    if is_main():
        compare_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    results: list[RunResult] = []
    for i, (name, strategies) in enumerate(runs.items()):
        run_dir = compare_dir / f"{i:02d}-{slug(name)}"
        results.append(task.train(recipe, strategies, run_dir, name))
    if is_main():
        from ..report.compare import write_report

        write_report(compare_dir, results, recipe, task.primary_metric)
    barrier()
    return compare_dir
