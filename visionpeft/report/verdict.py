"""The verdict of one compare row: the paired bootstrap on per-example test results when every run saved them,
else the seed-only t-interval (old compare directories), saying which.

Pairing: seed ``k`` of the strategy with seed ``k`` of full fine-tuning (the same seed), example ``i`` with
example ``i`` (the same test image). Classification runs save ``test_examples.json`` (:mod:`visionpeft.examples`),
Ultralytics runs ``test_images.npz`` (:mod:`visionpeft.image_records`); the images must be the same files, in the
same order or, when some run listed them in another order (Ultralytics' rect batches sort images by shape), with
the same unique names, which then put every run in name order. The saved results must be of the row's headline
metric (a report whose primary metric is another, e.g. box mAP of a segment compare, keeps the t-interval).

A metric that is a mean over examples (top-1, depth's delta1) takes :func:`~.bootstrap.paired_bootstrap`; mAP and
mIoU take :func:`~.bootstrap.statistic_bootstrap`, which recomputes Ultralytics' metric on every resample
(:mod:`.image_statistics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..examples import read_examples
from ..image_records import ImageRecords, read_records, records_path
from ..results import RunResult, StrategyRuns
from .bootstrap import BootstrapResult, paired_bootstrap, statistic_bootstrap
from .image_statistics import Statistic, statistic

__all__ = ["paired_scores", "paired_records", "bootstrap_row"]

_NONE = "no per-example test results saved (runs written before they were)"


def _stamp(run: RunResult) -> tuple[int, int, int]:
    """The records file's identity (inode, size, mtime), taken before it is read: a rewrite changes the key."""
    path = records_path(Path(run.run_dir), "test")
    st = path.stat() if path.is_file() else None
    return (st.st_ino, st.st_size, st.st_mtime_ns) if st else (0, 0, 0)


def _one(run: RunResult) -> ImageRecords | None:
    """The run's test results as records (classification's top-1 file read as a ``mean`` of 0/1 scores)."""
    run_dir = Path(run.run_dir)
    ex = read_examples(run_dir, "test")
    if ex is not None:
        return ImageRecords("mean", "top1", ex.files, {"values": ex.scores})
    return read_records(run_dir, "test")


def _aligned(records: list[ImageRecords]) -> list[ImageRecords] | str:
    """Every run's records over the same images in one order, or why they cannot be paired."""
    files = records[0].files
    if all(r.files == files for r in records):
        return records
    names = sorted(files)
    if len(set(names)) == len(names) and all(sorted(r.files) == names for r in records):
        return [r.reorder(np.argsort(np.asarray(r.files), kind="stable")) for r in records]
    return "the runs' test images differ (other data), so they cannot be paired image by image"


def paired_records(group: StrategyRuns, full: StrategyRuns, metric: str | None = None
                   ) -> tuple[list[ImageRecords], list[ImageRecords]] | str:
    """``(strategy, full)`` per-seed test records over the same images, or why they cannot be paired
    (``metric``: the row's headline metric the records must be of)."""
    seeds, ref_seeds = [r.extra.get("seed") for r in group.runs], [r.extra.get("seed") for r in full.runs]
    if seeds != ref_seeds:
        return f"seeds {seeds} differ from full fine-tuning's {ref_seeds}"
    records = [_one(r) for r in (*group.runs, *full.runs)]
    if any(r is None for r in records):
        return _NONE
    got = [r for r in records if r is not None]
    if len({(r.kind, r.metric) for r in got}) > 1:
        return "the runs saved different kinds of per-example results"
    if metric is not None and got[0].metric != metric:
        return f"the saved per-example results are of {got[0].metric}, not of the headline {metric}"
    aligned = _aligned(got)
    if isinstance(aligned, str):
        return aligned
    k = len(group.runs)
    return aligned[:k], aligned[k:]


def paired_scores(group: StrategyRuns, full: StrategyRuns) -> tuple[np.ndarray, np.ndarray] | str:
    """``(strategy, full)`` per-example test scores ``(K seeds, N images)`` of a mean-over-examples metric, or
    why they cannot be paired."""
    paired = paired_records(group, full)
    if isinstance(paired, str):
        return paired
    if paired[0][0].kind != "mean":
        return f"{paired[0][0].metric} is not a mean over images"
    return (np.stack([r.arrays["values"] for r in paired[0]]), np.stack([r.arrays["values"] for r in paired[1]]))


#: Statistics of records already read, by (run directory, file identity before reading, image order): full
#: fine-tuning's runs are the baseline of every row, and their statistic remembers the resamples it was last asked
#: (:func:`statistic`). Cleared past :data:`_CACHED` entries (each holds a run's predictions).
_STATISTICS: dict[tuple[str, tuple[int, int, int], tuple[str, ...]], Statistic] = {}
_CACHED = 64


def _statistic(run: RunResult, stamp: tuple[int, int, int], rec: ImageRecords) -> Statistic:
    key = (str(Path(run.run_dir)), stamp, rec.files)
    if key not in _STATISTICS:
        if len(_STATISTICS) >= _CACHED:  # a long-lived process reporting many compares
            _STATISTICS.clear()
        _STATISTICS[key] = statistic(rec)
    return _STATISTICS[key]


def _bootstrap(runs: Sequence[RunResult], stamps: Sequence[tuple[int, int, int]], mine: Sequence[ImageRecords],
               ref: Sequence[ImageRecords]) -> BootstrapResult:
    if mine[0].kind == "mean":
        return paired_bootstrap(np.stack([r.arrays["values"] for r in mine]),
                                np.stack([r.arrays["values"] for r in ref]))
    stats = [_statistic(run, stamp, r) for run, stamp, r in zip(runs, stamps, (*mine, *ref))]
    return statistic_bootstrap(stats[:len(mine)], stats[len(mine):], len(mine[0].files))


def bootstrap_row(group: StrategyRuns, full: StrategyRuns, metric: str | None = None
                  ) -> tuple[BootstrapResult | None, str]:
    """The paired bootstrap of ``group`` against ``full`` on ``metric`` (the headline's; ``None``: whatever the
    runs saved) and the verdict's basis in words; ``(None, reason)`` when the per-example results cannot be
    paired (the row then keeps the seed t-interval's verdict)."""
    if len(group.runs) < 2:  # one seed: the image level alone would ignore seed variance entirely
        return None, "seed t-interval (one seed: no interval, no verdict)"
    runs = (*group.runs, *full.runs)
    stamps = [_stamp(r) for r in runs]  # before reading: a file rewritten meanwhile gets a new cache key
    paired = paired_records(group, full, metric)
    if isinstance(paired, str):
        return None, f"seed t-interval ({paired})"
    res = _bootstrap(runs, stamps, *paired)
    what = "test images" if paired[0][0].kind == "mean" else f"test images, {paired[0][0].metric} recomputed"
    return res, f"bootstrap over {res.seeds} seeds x {res.examples} {what}"
