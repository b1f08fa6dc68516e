"""``visionpeft compare``: full fine-tuning plus each listed strategy, same recipe, then the report."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..outputs import slug
from . import get_task
from .base import RunResult
from .distributed import barrier, broadcast_object, is_main

__all__ = ["run_compare", "report_compare", "new_run_dir", "write_experiment_for", "remove_empty_tree"]

#: report.json keys that ``write_report`` computes; any other key came from the caller (``extra``) and is kept.
_COMPUTED = ("primary_metric", "protocol", "runs", "seed_runs", "lr_sweeps", "recipe")


def new_run_dir(recipe: Any, suffix: str = "") -> Path:
    """``<output>/<name><suffix>-<timestamp>``, made unique with ``-2``, ``-3``... if it exists.

    The suffix is left out when the name already says it: a recipe named ``bccd-compare`` compares into
    ``bccd-compare-<timestamp>``, not ``bccd-compare-compare-<timestamp>``.
    """
    name = slug(recipe.name)
    word = suffix.strip("-_.").lower()
    if word and word in re.split(r"[-_.]+", name.lower()):
        suffix = ""
    base = Path(recipe.output) / f"{name}{suffix}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 2
    while path.exists():
        path = base.with_name(f"{base.name}-{n}")
        n += 1
    return Path(broadcast_object(str(path)))  # every DDP rank must use rank 0's choice


def remove_empty_tree(path: Path) -> bool:
    """Delete ``path`` if it holds no file (only empty folders, or nothing); return whether it was deleted.

    A compare that fails before its first run writes anything leaves no empty folder behind this way.
    """
    path = Path(path)
    if not path.is_dir() or any(p.is_file() or p.is_symlink() for p in path.rglob("*")):
        return False
    for sub in sorted((p for p in path.rglob("*")), key=lambda p: len(p.parts), reverse=True):
        sub.rmdir()
    path.rmdir()
    return True


def write_experiment_for(log_dir: Path, recipe: Any, results: Sequence[RunResult]) -> None:
    """TensorBoard's HParams experiment over ``results`` in ``log_dir`` (rank 0, when TensorBoard is on).

    ``compare`` writes it into its first run's directory, ``train`` into its run directory; it declares which
    hyper-parameters differ between the runs (see :mod:`visionpeft.logging.hparams`). TensorBoard takes the
    experiment from whichever run holds it; written at the compare directory's root it would make that root
    a run of its own (a stray ``.`` in the run list, with no charts).
    """
    sessions = [r.extra["hparams"] for r in results if r.extra.get("hparams")]
    if not getattr(recipe, "tensorboard", False) or not is_main() or not sessions:
        return
    from ..logging.tensorboard import write_experiment

    write_experiment(log_dir, recipe.task, sessions)


def run_compare(recipe: Any, compare_dir: Path | None = None) -> Path:
    """Train ``full`` then every run of ``recipe.compare_runs()`` under the protocol, write the report; return the dir.

    Every run uses the recipe's data, epochs and schedule; only the strategy list differs, and with it the
    learning rates (each method's own; a single ``optim.lr`` for methods with different defaults is refused;
    ``lr_grid`` chooses a run's rate on validation). Each run trains ``recipe.seeds`` times (seed, seed+1, ...)
    and, when the data has a ``test`` split, is evaluated on it (see :mod:`visionpeft.tasks.protocol`).
    If a run fails before anything was written, the (empty) compare directory is removed again.
    """
    from .protocol import lr_grids, run_protocol, with_lr

    runs = recipe.compare_runs()
    grids = lr_grids(recipe, runs)  # checked before anything trains (auto needs per-method defaults)
    optim = getattr(recipe, "optim", None)  # classification; detection runs on Ultralytics' lr0
    if optim is not None:
        from ..errors import ConfigError
        from ..optim_settings import shared_lr_problem

        # a grid run sets its own rate on its entries
        problem = shared_lr_problem({k: with_lr(v, grids[k][0][0]) if k in grids else v for k, v in runs.items()},
                                    optim.lr)
        if problem:
            raise ConfigError(problem)
    task = get_task(recipe.task)
    compare_dir = Path(compare_dir) if compare_dir else new_run_dir(recipe, "-compare")
    created = not compare_dir.exists()
    if is_main():
        from ..outputs import make_dir

        make_dir(compare_dir, "output")
    barrier()
    try:
        groups = run_protocol(task, recipe, runs, compare_dir)
    except BaseException:
        if created and is_main():
            remove_empty_tree(compare_dir)
        raise
    if is_main():
        from ..report.compare import write_report
        from ..report.saved import save_runs

        every = [r for g in groups for r in (*g.runs, *g.grid_runs)]
        write_experiment_for(every[0].run_dir if every else compare_dir, recipe, every)
        save_runs(compare_dir, groups)  # what 'visionpeft report' rebuilds the report from
        write_report(compare_dir, groups, recipe, task.primary_metric)
    barrier()
    return compare_dir


def report_compare(compare_dir: Path) -> Path:
    """Rebuild ``report.{md,json,csv}``, ``report_seeds.csv`` and ``pareto.png`` of a finished compare from its
    saved runs (``visionpeft report COMPARE_DIR``); nothing is trained or evaluated. Return ``report.md``.

    Runs that saved per-example test results get the paired bootstrap verdict; older compare directories keep
    the seed t-interval's (``verdict_basis`` says so). The original ``environment`` (where the numbers were
    measured) and any extra facts of ``report.json`` are kept.

    Raises:
        ConfigError: not a compare directory, unreadable files, or a recipe that no longer validates.
    """
    from ..recipe import parse_recipe
    from ..report.compare import write_report
    from ..report.saved import load_runs

    compare_dir = Path(compare_dir)
    groups, report = load_runs(compare_dir)
    recipe = parse_recipe(report.get("recipe") or {}, source=f"{compare_dir / 'report.json'}: recipe")
    task = get_task(recipe.task)
    for run in (r for g in groups for r in g.runs):
        if "val_curve" not in run.extra and Path(run.run_dir).is_dir():
            run.extra["val_curve"] = task.val_curve(Path(run.run_dir))
    extra = {k: v for k, v in report.items() if k not in _COMPUTED}
    write_report(compare_dir, groups, recipe, report.get("primary_metric") or task.primary_metric, extra)
    return compare_dir / "report.md"

