"""TensorBoard logging for one run: scalars, the trainability plan as text, and HParams.

Compare writes one run per strategy under the compare directory (``<NN>-<name>/tb``), so pointing
TensorBoard at the compare directory overlays the strategies and the HParams tab compares them.

Tag names shared by every task: ``train/loss``, ``val/top1``, ``val/map50``, ``lr/<group>``,
``perf/img_per_s``, ``perf/peak_mem_mb``, ``params/trainable``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["RunLogger"]


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
        """The trainability plan as text plus the trainable-parameter count as ``params/trainable``."""
        summary = plan.summary() if hasattr(plan, "summary") else str(plan)
        self.text("plan", "```\n" + str(summary) + "\n```")
        count = getattr(plan, "trainable_count", None)
        if count is not None:
            self.scalar("params/trainable", float(count), 0)
        total = getattr(plan, "total", None)
        if total is not None:
            self.scalar("params/total", float(total), 0)

    def hparams(self, hparam_dict: Mapping[str, Any], metric_dict: Mapping[str, float]) -> None:
        """Record hyper-parameters and final metrics for the HParams tab, in this run's own folder.

        ``SummaryWriter.add_hparams`` would write into a new timestamped sub-folder, which splits one
        run in two in the UI; writing the three hparams summaries here keeps them together.
        """
        if self._writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparam_dict.items()}
        metrics = {f"hparam/{k}": float(v) for k, v in metric_dict.items()}
        exp, ssi, sei = hparams(clean, metrics)
        writer = self._writer._get_file_writer()
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)
        for tag, value in metrics.items():
            self._writer.add_scalar(tag, value, 0)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
