"""A run's name when none is given: what the run is, ``<data>-<strategies>`` (``coco8-freeze10``).

Run folders are ``<output>/<name>-<time>`` (:func:`visionpeft.tasks.compare.new_run_dir`); a recipe or ``name=`` that
names the run wins. Pure string work on the raw recipe mapping (before validation), so it costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["derived_name", "data_label", "strategies_label"]

#: File stems that say nothing about the data (``bccd_yolo/data.yaml``): the folder names it instead.
_GENERIC_STEMS = frozenset({"data", "dataset", "datasets", "config", "train"})


def data_label(data: Any) -> str:
    """``coco8.yaml`` -> ``coco8``; ``../shared/data/bccd_yolo/data.yaml`` -> ``bccd_yolo``; a folder -> its name."""
    text = str(data or "").strip().rstrip("/\\")
    if not text:
        return "data"
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml"):
        return path.parent.name if path.stem.lower() in _GENERIC_STEMS and path.parent.name else path.stem
    return path.name or "data"


def _entry_label(entry: Any) -> str:
    if isinstance(entry, str):
        return entry
    if not isinstance(entry, dict):
        return "run"
    method = str(entry.get("method", "run"))
    n = entry.get("n")
    if method == "freeze" and isinstance(n, int) and not isinstance(n, bool):
        return f"freeze{n}"
    if method == "freeze" and isinstance(n, list):
        return "freeze" + "_".join(str(i) for i in n)
    return method


def strategies_label(strategies: Any) -> str:
    """``[{method: freeze, n: 10}]`` -> ``freeze10``; ``[lora, head]`` -> ``lora-head``; nothing -> ``full``."""
    entries = strategies if isinstance(strategies, list) else []
    return "-".join(_entry_label(e) for e in entries) or "full"


def derived_name(doc: dict[str, Any]) -> str:
    """The name of a run described by the recipe mapping ``doc`` (``compare`` when it only lists compare runs)."""
    what = "compare" if doc.get("compare") and not doc.get("strategies") else strategies_label(doc.get("strategies"))
    return f"{data_label(doc.get('data'))}-{what}"
