"""A compare's runs on disk (``runs.json``), so ``visionpeft report COMPARE_DIR`` rebuilds the report without
retraining.

``run_compare`` writes ``runs.json`` next to the report: every :class:`~visionpeft.tasks.base.StrategyRuns`
(seeds, grid points, chosen rate and its source) with run directories relative to the compare directory, so a
moved or copied compare directory still reports. Compare directories written before ``runs.json`` existed are
read back from their ``report.json`` (``seed_runs``, ``lr_sweeps``, the rows' ``lr``) and each run's
``metrics.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..results import GridPoint, RunResult, StrategyRuns

__all__ = ["save_runs", "load_runs", "RUNS_FILE"]

RUNS_FILE = "runs.json"


def _rel(path: Path, root: Path) -> str:
    try:
        return os.path.relpath(Path(path).resolve(), root.resolve())
    except ValueError:  # another drive (Windows)
        return str(path)


def _run_doc(run: RunResult, root: Path) -> dict[str, Any]:
    doc = run.to_dict()
    doc["run_dir"] = _rel(run.run_dir, root)
    doc["extra"] = {k: v for k, v in run.extra.items() if k != "hparams"}  # TensorBoard's copy, not needed here
    return doc


def save_runs(compare_dir: Path, groups: Sequence[StrategyRuns]) -> Path:
    """Write ``runs.json`` (see the module docstring); return its path."""
    root = Path(compare_dir)
    doc = [{"name": g.name, "lr": g.lr, "lr_source": g.lr_source,
            "runs": [_run_doc(r, root) for r in g.runs],
            "grid_runs": [_run_doc(r, root) for r in g.grid_runs],
            "grid": [{"lr": p.lr, "val_metric": p.val_metric, "train_seconds": p.train_seconds,
                      "run_dir": _rel(p.run_dir, root)} for p in g.grid]} for g in groups]
    path = root / RUNS_FILE
    path.write_text(json.dumps({"version": 1, "groups": doc}, indent=1, default=str))
    return path


def _result(doc: dict[str, Any], root: Path) -> RunResult:
    run = RunResult.from_dict({**doc, "run_dir": str(root / doc["run_dir"])})
    run.run_dir = Path(os.path.normpath(run.run_dir))
    return run


def _from_runs_file(root: Path) -> list[StrategyRuns]:
    doc = json.loads((root / RUNS_FILE).read_text())
    return [StrategyRuns(name=g["name"], lr=g["lr"], lr_source=g.get("lr_source", "default"),
                         runs=[_result(r, root) for r in g["runs"]],
                         grid_runs=[_result(r, root) for r in g["grid_runs"]],
                         grid=[GridPoint(lr=p["lr"], val_metric=p["val_metric"], train_seconds=p["train_seconds"],
                                         run_dir=root / p["run_dir"]) for p in g["grid"]]) for g in doc["groups"]]


def _from_report(root: Path, report: dict[str, Any]) -> list[StrategyRuns]:
    """An older compare directory: the groups from ``report.json`` and each run's ``metrics.json``."""
    rows = {r["strategy"]: r for r in report.get("runs", [])}
    groups: dict[str, StrategyRuns] = {}
    for seed_row in report.get("seed_runs", []):
        name, run_dir = seed_row["strategy"], _local(Path(seed_row["run_dir"]), root)
        metrics = run_dir / "metrics.json"
        if not metrics.is_file():
            raise ConfigError(f"{root}: run {run_dir} of {name!r} has no metrics.json; cannot rebuild the report")
        run = RunResult.from_dict({**json.loads(metrics.read_text()), "run_dir": str(run_dir)})
        run.extra.update(seed=seed_row.get("seed"), lr=seed_row.get("lr"))
        test = {k[:-5]: v for k, v in seed_row.items() if k.endswith("_test") and v is not None}
        if test:
            run.extra["test_metrics"] = test
        group = groups.setdefault(name, StrategyRuns(name=name, runs=[], lr=rows.get(name, {}).get("lr")))
        group.runs.append(run)
    for p in report.get("lr_sweeps", []):
        g = groups.get(p["strategy"])
        if g is not None:
            g.lr_source = "lr_grid"
            g.grid.append(GridPoint(lr=p["lr"], val_metric=p["val_metric"], train_seconds=p["train_seconds"],
                                    run_dir=_local(Path(p["run_dir"]), root)))
    for g in groups.values():
        if not g.grid:
            g.lr = None  # the old rows' lr was the grid's choice only
    return list(groups.values())


def _local(path: Path, root: Path) -> Path:
    """The same ``NN-run/...`` tail under ``root`` when it is there (a moved or copied compare directory
    reports from its own runs), else ``path``."""
    parts = path.parts
    for i, part in enumerate(parts):
        if part[:2].isdigit() and part[2:3] == "-" and (root / Path(*parts[i:])).is_dir():
            return root / Path(*parts[i:])
    return path


def load_runs(compare_dir: Path) -> tuple[list[StrategyRuns], dict[str, Any]]:
    """The compare's groups (full fine-tuning first) and its ``report.json`` (recipe, primary metric, ...).

    Raises:
        ConfigError: not a compare directory (no ``report.json``), an unreadable file, or a run without its
            ``metrics.json``.
    """
    root = Path(compare_dir)
    path = root / "report.json"
    if not path.is_file():
        what = "does not exist" if not root.exists() else "has no report.json"
        raise ConfigError(f"{root}: {what}; 'visionpeft report' takes a directory written by 'visionpeft compare'")
    try:
        report = json.loads(path.read_text())
        groups = _from_runs_file(root) if (root / RUNS_FILE).is_file() else _from_report(root, report)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{root}: unreadable compare files ({type(exc).__name__}: {exc}); "
                          "restore them from the compare") from None
    if not groups or not all(g.runs for g in groups):
        raise ConfigError(f"{root}: report.json lists no runs; nothing to report")
    return groups, report
