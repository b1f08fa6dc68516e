"""Per-example test results of a run (``<split>_examples.json``): what the compare report's bootstrap pairs.

One small JSON file per evaluated run and split, written by the task when the compare protocol evaluates the
kept checkpoint on ``test``::

    {"split": "test", "score": "top1 correct", "files": [...], "labels": [...], "predictions": [...]}

``files`` are the images in evaluation order (absolute paths), ``labels`` / ``predictions`` class indices; the
score of example ``i`` is ``predictions[i] == labels[i]`` (1.0 or 0.0). 500 test images make about 40 kB.
Two runs are paired example by example only when their ``files`` lists are equal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Examples", "examples_path", "write_examples", "read_examples"]


@dataclass(frozen=True)
class Examples:
    """One run's per-example results on one split (see the module docstring)."""

    split: str
    files: tuple[str, ...]
    labels: tuple[int, ...]
    predictions: tuple[int, ...]

    @property
    def scores(self) -> np.ndarray:
        """``(N,)`` float64: 1.0 where the top-1 prediction is the label, else 0.0."""
        return (np.asarray(self.predictions) == np.asarray(self.labels)).astype(np.float64)


def examples_path(run_dir: Path, split: str) -> Path:
    """``<run_dir>/<split>_examples.json``."""
    return Path(run_dir) / f"{split}_examples.json"


def write_examples(run_dir: Path, split: str, files: Sequence[str], labels: Sequence[int],
                   predictions: Sequence[int]) -> Path:
    """Write a run's per-example results on ``split``; return the file.

    Raises:
        ValueError: the three lists differ in length (the evaluation did not see every listed image once).
    """
    if not len(files) == len(labels) == len(predictions):
        raise ValueError(f"per-example results: {len(files)} files, {len(labels)} labels and "
                         f"{len(predictions)} predictions; each image needs one of each")
    path = examples_path(run_dir, split)
    path.write_text(json.dumps({"split": split, "score": "top1 correct", "files": [str(f) for f in files],
                                "labels": [int(v) for v in labels], "predictions": [int(v) for v in predictions]}))
    return path


def read_examples(run_dir: Path, split: str = "test") -> Examples | None:
    """The run's per-example results on ``split``; ``None`` when it has none (runs written before they were
    saved, detection runs) or the file is unreadable or inconsistent."""
    path = examples_path(run_dir, split)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        out = Examples(split=str(doc["split"]), files=tuple(map(str, doc["files"])),
                       labels=tuple(map(int, doc["labels"])), predictions=tuple(map(int, doc["predictions"])))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return out if len(out.files) == len(out.labels) == len(out.predictions) > 0 else None
