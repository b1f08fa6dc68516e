"""The merge-before-validation job of :class:`~.trainer.PeftTrainerMixin`: Ultralytics' final validation of
``best.pt`` with the adapters merged into plain layers first (also written as ``weights/merged.pt``).

``BaseTrainer.final_eval`` (15 lines in Ultralytics 8.4) strips ``last.pt`` / ``best.pt`` in place and validates
``best.pt`` by path, so the validator would fuse an unmerged model; it offers no hook for either. It is restated
here with the two changes, instead of wrapping the validator or swapping Ultralytics' module globals: the strip is
atomic (:func:`.trainer_checkpoints.strip_atomic`) and the validator gets the merged model.

The restatement replaces ``BaseTrainer.final_eval`` and nothing above it: :class:`RestatedFinalEval` subclasses
``BaseTrainer`` and the generated trainer classes list it after Ultralytics' task trainer
(``PeftDepthTrainer(PeftTrainerMixin, DepthTrainer, RestatedFinalEval)``), so its place in the MRO is just above
``BaseTrainer``. A task trainer that extends ``final_eval`` keeps its extension, as in Ultralytics:
``DepthTrainer.final_eval`` calls ``super().final_eval()`` (this restatement), then fits the depth head's output
scale and writes it into ``best.pt`` / ``last.pt``. :class:`FinalEvalMixin`, in front, then writes ``merged.pt``
again from the rewritten ``best.pt``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.utils import LOCAL_RANK, LOGGER, RANK
from ultralytics.utils.torch_utils import torch_distributed_zero_first

from .merge import merged_copy
from .trainer_checkpoints import strip_atomic

__all__ = ["FinalEvalMixin", "RestatedFinalEval"]


class FinalEvalMixin:
    """In front of the task trainer: its ``final_eval``, then ``merged.pt`` again if ``best.pt`` changed after the
    validation (see the module docstring)."""

    _vp_merged_from: str | None = None  # digest of the best.pt that merged.pt was last written from

    def final_eval(self) -> None:
        super().final_eval()  # type: ignore[misc]
        self._vp_remerge_if_rewritten()

    def _vp_remerge_if_rewritten(self) -> None:
        """``merged.pt`` again from ``best.pt`` when the task's trainer rewrote ``best.pt`` after validating it
        (``DepthTrainer``: its output-scale calibration, the Depth head's ``cal_a``/``cal_b`` buffers): the merged
        checkpoint must compute what ``best.pt`` computes."""
        merged, best = self.wdir / "merged.pt", Path(self.best)
        if RANK not in {-1, 0} or not (merged.is_file() and best.is_file()):
            return
        if _digest(best) == self._vp_merged_from:  # contents, not times: file times can be coarse
            return
        from ...backends.safe_load import load_checkpoint

        LOGGER.info(f"visionpeft: {best} changed after the final validation; writing merged.pt again from it")
        self._vp_write_merged(merged_copy(load_checkpoint(best)[0]), best)


class RestatedFinalEval(BaseTrainer):
    """``BaseTrainer.final_eval`` restated, listed after the task trainer (see the module docstring)."""

    def final_eval(self) -> None:
        """Strip the checkpoints (atomically), validate ``best.pt`` merged, record the validator's settings.

        ``vp_final_eval`` tells the TensorBoard callback that these metrics are the result, not one more epoch;
        ``vp_val_settings`` is what ``visionpeft eval`` reuses to validate the same way.
        """
        best = self.best if self.best.exists() else None
        with torch_distributed_zero_first(LOCAL_RANK):  # as Ultralytics: strip on rank 0 only, the others wait
            if RANK in {-1, 0}:
                ckpt = strip_atomic(self.last) if self.last.exists() else {}
                if best:
                    strip_atomic(self.best, updates={"train_results": ckpt.get("train_results")})
        if best is None:
            return
        from ...backends.safe_load import load_checkpoint

        LOGGER.info(f"visionpeft: validating {best} with its adapters merged before fusing")
        merged = merged_copy(load_checkpoint(best)[0])
        self._vp_write_merged(merged, best)
        self.validator.args.plots = self.args.plots
        self.validator.args.compile = False  # as Ultralytics: compiling the final validation is too slow
        self.vp_final_eval = True
        try:
            self.metrics = self.validator(model=merged)
            self.metrics.pop("fitness", None)
            self.epoch += 1  # as Ultralytics: the result is logged at step epochs + 1
            self.run_callbacks("on_fit_epoch_end")
            self.epoch -= 1
        finally:
            self.vp_final_eval = False
        if getattr(self.validator, "dataloader", None) is not None:
            from .validation import record_settings

            self.vp_val_settings = record_settings(self.validator)

    def _vp_write_merged(self, merged: nn.Module, source: Path) -> None:
        """Ship-ready output (rank 0): a plain Ultralytics checkpoint, loadable without visionpeft."""
        if RANK in {-1, 0}:
            from ...backends import backend_named

            backend_named("ultralytics").export_merged(merged, self.wdir / "merged.pt",
                                                       {"merged_from": str(source), "strategies": self.vp_strategies})
            self._vp_merged_from = _digest(Path(source))


def _digest(path: Path) -> str:
    """SHA-256 of a file's bytes (a checkpoint: tens of MB, read once or twice per run)."""
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
