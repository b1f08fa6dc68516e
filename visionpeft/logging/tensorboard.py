"""TensorBoard logging for one run: scalars, the trainability plan as text, and HParams.

A run writes its event files into its own run directory, so pointing TensorBoard at a compare directory
shows one run per strategy named like its folder (``00-full``, ``01-lora``...), and the HParams tab
compares them (see :mod:`visionpeft.logging.hparams`).

**x-axis** (both tasks): ``step`` = training batches processed since the run started (it continues across a
resume). Training scalars are logged at the step they were measured, validation scalars at the step where
their epoch ended; ``progress/epoch`` (epochs completed, 1-based) at that same step maps steps to epochs.
The kept model's final evaluation is not one more epoch: it goes to its own ``result/`` tags at the last step.

Tags (TensorBoard's TIME SERIES groups them by the part before ``/`` in this order, and opens the first two:
losses and the task metric):

* ``loss/train``: training loss (classification: cross-entropy of the logged batch; detection: box + cls +
  dfl, mean over the epoch; its parts as ``loss/train_box``...); ``loss/val`` (and ``loss/val_box``...).
* ``metrics/<name>``: validation metrics after each epoch, fractions in 0-1: ``top1``, ``top5``,
  ``mean_class_acc`` (classification); ``map50_95``, ``map50``, ``precision``, ``recall`` (detection).
* ``optim/lr_<owner>``: learning rate of each parameter group, named by what it holds (``head``, ``lora``...).
* ``perf/img_per_s`` (training images per second), ``perf/peak_mem_mb`` (MiB), ``perf/step_time_s`` (mean
  seconds per training batch); classification measures the epoch, detection the run so far.
* ``progress/epoch``: epochs completed.
* ``result/<name>``: the kept model's final evaluation (classification: the best epoch's validation;
  detection: Ultralytics' re-validation of ``best.pt`` with the adapters merged), read by the HParams tab.
* ``val_class/<class>``: per-class validation accuracy (classification, up to 100 classes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["RunLogger", "write_experiment"]


class RunLogger:
    """A thin wrapper over ``torch.utils.tensorboard.SummaryWriter``.

    Args:
        log_dir: event-file folder (created).
        enabled: ``False`` makes every call a no-op (non-zero DDP ranks, ``tensorboard: false``).
    """

    def __init__(self, log_dir: str | Path, enabled: bool = True) -> None:
        self.log_dir = Path(log_dir)
        self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(self.log_dir))

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One scalar point."""
        if self._writer is not None:
            self._writer.add_scalar(tag, float(value), int(step))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Several scalars at the same step (each under its own tag, so runs overlay per tag)."""
        for tag, value in values.items():
            self.scalar(tag, value, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Text shown in the TEXT tab (Markdown; wrapped in a code block by the caller if needed)."""
        if self._writer is not None:
            self._writer.add_text(tag, text, int(step))

    def plan(self, plan: Any) -> None:
        """The trainability plan as text (TEXT tab); its counts are hyper-parameters (:meth:`session_start`)."""
        summary = plan.summary() if hasattr(plan, "summary") else str(plan)
        self.text("plan", "```\n" + str(summary) + "\n```")

    def _summary(self, summary: Any) -> None:
        if self._writer is not None:
            self._writer._get_file_writer().add_summary(summary)

    def session_start(self, hparams: Mapping[str, Any]) -> None:
        """This run's hyper-parameters for the HParams tab (names from :data:`~.hparams.HPARAMS`)."""
        from .hparams import session_start_summary

        self._summary(session_start_summary(hparams))

    def session_end(self, ok: bool = True) -> None:
        """Mark this run finished (``ok=False``: failed) in the HParams tab."""
        from .hparams import session_end_summary

        self._summary(session_end_summary(ok))

    def experiment(self, task: str, sessions: Sequence[Mapping[str, Any]]) -> None:
        """The experiment summary over the runs below this log directory (see :mod:`.hparams`).

        Args:
            task: ``classification`` or ``detection`` (picks the metric columns).
            sessions: the hyper-parameters of every run, as given to :meth:`session_start`.
        """
        from .hparams import experiment_summary

        self._summary(experiment_summary(task, sessions))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def write_experiment(log_dir: str | Path, task: str, sessions: Sequence[Mapping[str, Any]]) -> None:
    """Write the HParams experiment summary of the runs below ``log_dir`` into ``log_dir`` itself.

    ``compare`` calls it for the compare directory, ``train`` for its run directory (see :mod:`.hparams`).
    """
    logger = RunLogger(log_dir)
    try:
        logger.experiment(task, sessions)
    finally:
        logger.close()
