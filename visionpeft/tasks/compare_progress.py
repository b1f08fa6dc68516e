"""The compare's own progress line: which training run of how many, time so far and an overall estimate.

::

    compare: run 3 of 5: bitfit (seed 0) | 2m10s so far, about 2m55s left

The estimate is the mean duration of the finished runs times the runs left: full fine-tuning (always first) is
usually the slowest, so it errs on the long side. Rank 0 prints; other processes stay quiet.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

__all__ = ["CompareProgress", "count_trainings", "duration"]


def count_trainings(runs: Mapping[str, Any], seeds: Sequence[int], grids: Mapping[str, Sequence[float]]) -> int:
    """Training runs a compare does: per run, its seeds, plus its ``lr_grid`` rates but one (the grid's chosen
    rate is the first seed's run)."""
    return sum(len(seeds) + (len(grids[name]) - 1 if name in grids else 0) for name in runs)


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class CompareProgress:
    """Prints one line as each training run of a compare starts.

    Args:
        total: training runs in the compare (:func:`count_trainings`).
        stream: where the lines go (stdout by default).
        enabled: print at all (rank 0 of a distributed run only).
        clock: seconds, monotonic (a test passes a fake one).
    """

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True,
                 clock: Any = time.monotonic) -> None:
        self.total, self.stream, self.enabled, self.clock = total, stream, enabled, clock
        self.started = clock()
        self.finished = 0

    def start(self, name: str, detail: str = "") -> None:
        """Announce run ``finished + 1`` (``name``, e.g. ``lora``; ``detail``, e.g. ``seed 1`` or ``lr 1e-3``)."""
        if not self.enabled:
            return
        elapsed = self.clock() - self.started
        line = f"compare: run {self.finished + 1} of {self.total}: {name}" + (f" ({detail})" if detail else "")
        if self.finished:
            left = elapsed / self.finished * (self.total - self.finished)
            line += f" | {duration(elapsed)} so far, about {duration(left)} left"
        print(line, file=self.stream or sys.stdout, flush=True)

    def done(self) -> None:
        """One training run finished."""
        self.finished += 1
