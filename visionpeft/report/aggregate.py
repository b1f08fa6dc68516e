"""Compare rows: one per strategy, aggregated over its seeds, against full fine-tuning (paired by seed).

Column names say the split: ``top1_val`` is the kept (best-validation) epoch's validation value, ``top1_test``
the same checkpoint on the test split (only when the data has one). The **headline** column is
``<primary>_test`` when there is a test split, else ``<primary>_val``; it gets ``_std`` and a 95% t-interval
(``_ci_low``/``_ci_high``), and its paired difference to full fine-tuning gets two intervals: the seed-only
t-interval (``delta_<head>_ci_low/high``, verdict ``verdict_t``, :mod:`.stats`) and the paired bootstrap over
seeds and test images (``delta_<head>_boot_low/high``, :mod:`.bootstrap`). ``verdict`` is the bootstrap's where
every run saved per-example test results, else the t-interval's; ``verdict_basis`` says which. Every value is
the mean over seeds. ``lr`` / ``lr_source``: the run's rate and where it came from (``auto``, ``lr_grid``,
``given``, ``default``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..results import RunResult, StrategyRuns
from .stats import mean_interval, paired_interval, verdict
from .verdict import bootstrap_row

__all__ = ["as_groups", "metric_names", "has_test", "headline", "strategy_rows", "seed_rows", "time_to_target"]

#: Metrics shown with their spread are at most these many decimals (fractions in 0-1).
_DIGITS = 6


def as_groups(results: Sequence[RunResult | StrategyRuns]) -> list[StrategyRuns]:
    """Plain run results (one seed each, the old call form) wrapped as single-seed groups."""
    return [g if isinstance(g, StrategyRuns) else StrategyRuns(name=g.strategy, runs=[g]) for g in results]


def metric_names(groups: Sequence[StrategyRuns]) -> list[str]:
    """Metric names in first-seen order over every run (validation metrics)."""
    names: list[str] = []
    for g in groups:
        for r in g.runs:
            names += [k for k in r.metrics if k not in names]
    return names


def has_test(groups: Sequence[StrategyRuns]) -> bool:
    """Whether every run was evaluated on a test split."""
    runs = [r for g in groups for r in g.runs]
    return bool(runs) and all("test_metrics" in r.extra for r in runs)


def headline(primary: str, test: bool) -> str:
    """The headline column: ``<primary>_test`` with a test split, else ``<primary>_val``."""
    return f"{primary}_{'test' if test else 'val'}"


def _value(run: RunResult, column: str) -> float | None:
    metric, _, split = column.rpartition("_")
    source = run.extra.get("test_metrics", {}) if split == "test" else run.metrics
    value = source.get(metric)
    return None if value is None else float(value)


def _values(runs: Sequence[RunResult], column: str) -> list[float] | None:
    values = [_value(r, column) for r in runs]
    return None if any(v is None for v in values) else [float(v) for v in values if v is not None]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, _DIGITS)


def time_to_target(curve: Sequence[Sequence[float]], target: float) -> float | None:
    """Elapsed seconds at the first epoch whose value reaches ``target`` (``None``: never)."""
    for seconds, value in curve:
        if value >= target - 1e-12:
            return float(seconds)
    return None


def _time_to_full(group: StrategyRuns, full: StrategyRuns) -> tuple[Any, str | None]:
    """Mean seconds (over the seeds that got there) to reach full fine-tuning's final validation value of the
    same seed, or ``"never"``; and ``"reached/seeds"``. ``(None, None)`` when the runs recorded no curves."""
    times, known = [], 0
    for run, ref in zip(group.runs, full.runs):
        curve, ref_curve = run.extra.get("val_curve") or [], ref.extra.get("val_curve") or []
        if not ref_curve or not curve:
            continue
        known += 1
        t = time_to_target(curve, ref_curve[-1][1])
        if t is not None:
            times.append(t)
    if not known:
        return None, None
    return (round(sum(times) / len(times), 2) if times else "never"), f"{len(times)}/{known}"


def _ratio(value: float, ref: float) -> float | None:
    return round(value / ref, 4) if ref else None


def _mean(runs: Sequence[RunResult], attr: str) -> float:
    return sum(float(getattr(r, attr)) for r in runs) / max(len(runs), 1)


def _perf(group: StrategyRuns, full: StrategyRuns) -> dict[str, Any]:
    runs, ref = group.runs, full.runs
    step, mem = _mean(runs, "step_time_s"), _mean(runs, "peak_mem_mb")
    return {"peak_mem_mb": round(mem, 1), "train_img_per_s": round(_mean(runs, "train_img_per_s"), 2),
            "train_seconds": round(_mean(runs, "train_seconds"), 2), "sweep_seconds": round(group.sweep_seconds, 2),
            "compute_seconds": round(group.compute_seconds, 2), "adapter_bytes": runs[0].adapter_bytes,
            "step_time_s": round(step, 5), "step_time_ratio_vs_full": _ratio(step, _mean(ref, "step_time_s")),
            "peak_mem_ratio_vs_full": _ratio(mem, _mean(ref, "peak_mem_mb"))}


def _metric_columns(group: StrategyRuns, full: StrategyRuns, columns: Sequence[str], head: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for col in columns:
        values, ref = _values(group.runs, col), _values(full.runs, col)
        row[col] = _round(mean_interval(values).mean) if values else None
        paired = values is not None and ref is not None and len(values) == len(ref)
        row[f"delta_{col}_vs_full"] = _round(paired_interval(values, ref).mean) if paired else None
        if col != head:
            continue
        spread = mean_interval(values) if values else None
        delta = paired_interval(values, ref) if paired else None
        row[f"{col}_std"] = _round(spread.std) if spread else None
        row[f"{col}_ci_low"] = _round(spread.low) if spread else None
        row[f"{col}_ci_high"] = _round(spread.high) if spread else None
        row[f"delta_{col}_ci_low"] = _round(delta.low) if delta else None
        row[f"delta_{col}_ci_high"] = _round(delta.high) if delta else None
        row["verdict_t"] = "baseline" if group is full else (verdict(delta) if delta else "n/a")
        row.update(_bootstrap_columns(group, full, col, row["verdict_t"]))
    return row


def _bootstrap_columns(group: StrategyRuns, full: StrategyRuns, col: str, t_verdict: str) -> dict[str, Any]:
    """The verdict: the paired bootstrap on per-example test results where every run saved them, else the seed
    t-interval's (``verdict_basis`` says which; see :mod:`.verdict`)."""
    out: dict[str, Any] = {f"delta_{col}_boot_low": None, f"delta_{col}_boot_high": None, "bootstrap_ms": None}
    if group is full:
        return {**out, "verdict": "baseline", "verdict_basis": None}
    boot, basis = bootstrap_row(group, full, col[:-len("_test")]) if col.endswith("_test") else \
        (None, "seed t-interval (no test split)")
    if boot is None:
        return {**out, "verdict": t_verdict, "verdict_basis": basis}
    return {f"delta_{col}_boot_low": _round(boot.low), f"delta_{col}_boot_high": _round(boot.high),
            "bootstrap_ms": round(boot.seconds * 1e3, 1), "verdict": boot.verdict, "verdict_basis": basis}


def _rate(group: StrategyRuns) -> float | None:
    """The run's rate: the one chosen from its grid, else the highest peak rate outside the head that its first
    run recorded (``extra["lrs"]``, classification), else ``None`` (Ultralytics' ``lr0``)."""
    if group.lr is not None:
        return group.lr
    lrs = group.runs[0].extra.get("lrs") or {} if group.runs else {}
    body = [float(v) for owner, v in lrs.items() if owner != "head"]
    return max(body) if body else None


def strategy_rows(groups: Sequence[StrategyRuns], primary: str) -> list[dict[str, Any]]:
    """One row per strategy (see the module docstring); deltas against the group named ``full`` (or the first)."""
    if not groups:
        return []
    full = next((g for g in groups if g.name == "full"), groups[0])
    test = has_test(groups)
    head = headline(primary, test)
    metrics = metric_names(groups)
    columns = [f"{m}_{s}" for m in metrics for s in (("val", "test") if test else ("val",))]
    rows = []
    for g in groups:
        first = g.runs[0]
        row: dict[str, Any] = {"strategy": g.name, "seeds": len(g.runs), "trainable_params": first.trainable_params,
                               "total_params": first.total_params, "trainable_pct": round(first.trainable_pct, 4),
                               "lr": _rate(g), "lr_source": g.lr_source,
                               "lr_grid": " ".join(f"{p.lr:g}" for p in g.grid) or None}
        row.update(_metric_columns(g, full, columns, head))
        row["time_to_full_val_s"], row["time_to_full_reached"] = _time_to_full(g, full)
        row.update(_perf(g, full))
        rows.append(row)
    return rows


def seed_rows(groups: Sequence[StrategyRuns]) -> list[dict[str, Any]]:
    """One row per training run kept by the protocol (every seed of every strategy)."""
    rows = []
    for g in groups:
        for r in g.runs:
            row: dict[str, Any] = {"strategy": g.name, "seed": r.extra.get("seed"), "lr": r.extra.get("lr"),
                                   "best_epoch": r.extra.get("best_epoch")}  # counted from 1 (tasks.base.EPOCH_BASE)
            row.update({f"{k}_val": v for k, v in r.metrics.items()})
            row.update({f"{k}_test": v for k, v in r.extra.get("test_metrics", {}).items()})
            row.update({"train_seconds": round(r.train_seconds, 2), "run_dir": str(Path(r.run_dir))})
            rows.append(row)
    return rows


def grid_rows(groups: Sequence[StrategyRuns]) -> list[dict[str, Any]]:
    """One row per learning-rate grid point: rate, validation value (the criterion), seconds, chosen."""
    return [{"strategy": g.name, "lr": p.lr, "val_metric": p.val_metric, "train_seconds": round(p.train_seconds, 2),
             "chosen": p.lr == g.lr, "run_dir": str(p.run_dir)} for g in groups for p in g.grid]
