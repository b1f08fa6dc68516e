"""The verdict of one compare row: the paired bootstrap on per-example test results when every run saved them,
else the seed-only t-interval (old compare directories, detection), saying which.

Pairing: seed ``k`` of the strategy with seed ``k`` of full fine-tuning (the same seed), example ``i`` with
example ``i`` (the same test image: the runs' ``test_examples.json`` must list the same files in the same order).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..examples import read_examples
from ..results import RunResult, StrategyRuns
from .bootstrap import BootstrapResult, paired_bootstrap

__all__ = ["paired_scores", "bootstrap_row"]


def _scores(runs: Sequence[RunResult]) -> list[tuple[tuple[str, ...], np.ndarray]] | None:
    out = []
    for r in runs:
        ex = read_examples(Path(r.run_dir), "test")
        if ex is None:
            return None
        out.append((ex.files, ex.scores))
    return out


def paired_scores(group: StrategyRuns, full: StrategyRuns) -> tuple[np.ndarray, np.ndarray] | str:
    """``(strategy, full)`` per-example test scores, ``(K seeds, N images)`` each, or why they cannot be paired."""
    seeds, ref_seeds = [r.extra.get("seed") for r in group.runs], [r.extra.get("seed") for r in full.runs]
    if seeds != ref_seeds:
        return f"seeds {seeds} differ from full fine-tuning's {ref_seeds}"
    mine, ref = _scores(group.runs), _scores(full.runs)
    if mine is None or ref is None:
        return "no per-example test results saved (runs written before they were, or a detection task)"
    files = ref[0][0]
    if any(f != files for f, _ in (*mine, *ref)):
        return "the runs' test images differ (other data or order), so they cannot be paired image by image"
    return np.stack([s for _, s in mine]), np.stack([s for _, s in ref])


def bootstrap_row(group: StrategyRuns, full: StrategyRuns) -> tuple[BootstrapResult | None, str]:
    """The paired bootstrap of ``group`` against ``full`` and the verdict's basis in words; ``(None, reason)``
    when the per-example results cannot be paired (the row then keeps the seed t-interval's verdict)."""
    if len(group.runs) < 2:  # one seed: the image level alone would ignore seed variance entirely
        return None, "seed t-interval (one seed: no interval, no verdict)"
    paired = paired_scores(group, full)
    if isinstance(paired, str):
        return None, f"seed t-interval ({paired})"
    res = paired_bootstrap(*paired)
    return res, f"bootstrap over {res.seeds} seeds x {res.examples} test images"
