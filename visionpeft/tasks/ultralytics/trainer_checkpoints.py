"""The checkpoint job of :class:`~.trainer.PeftTrainerMixin`: atomic ``last.pt`` / ``best.pt`` writes, resume in the
directory that holds ``last.pt``, a clear error for a finished or damaged run, frozen tensors reset to the exact
base after Ultralytics loads its float16 EMA, ``results.csv`` trimmed to the checkpoint's epoch."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ultralytics.utils import RANK

from ...checkpoint import STAGING_DIR, atomic_write, remove_stale_temporaries
from ...errors import ConfigError
from . import resume

__all__ = ["CheckpointMixin", "strip_atomic"]


class CheckpointMixin:
    """``check_resume``, ``save_model``, ``resume_training``, ``_load_checkpoint_state``."""

    def check_resume(self, overrides: dict[str, Any]) -> None:
        """Ultralytics' resume check, with a clear error for a damaged ``last.pt`` and the run dir where it lies.

        Ultralytics takes ``save_dir`` from inside the checkpoint, so resuming a copied run directory would write
        into the original: here the run continues in the directory that holds ``weights/last.pt`` (or in an
        explicit ``save_dir`` override).
        """
        target = self.args.resume
        if target and isinstance(target, (str, Path)) and Path(target).is_file():
            resume.read_checkpoint(target)  # ConfigError naming size and cause instead of "not found"
        super().check_resume(overrides)
        if self.resume:
            run_dir = overrides.get("save_dir") or resume.run_dir_of(self.args.resume)
            if run_dir:
                self.args.save_dir = str(run_dir)

    def save_model(self) -> Any:
        """Ultralytics' checkpoints, each written to a temporary file and renamed over the old one.

        Ultralytics writes ``last.pt`` in place: a run killed while saving would leave a torn file and nothing to
        resume from. Here the previous good file stays until the new one is complete.
        """
        wdir, last, best = self.wdir, self.last, self.best
        staging = wdir / STAGING_DIR
        shutil.rmtree(staging, ignore_errors=True)
        self.wdir, self.last, self.best = staging, staging / last.name, staging / best.name
        try:
            saved = super().save_model()
            for path in sorted(staging.iterdir()):  # last.pt first: best.pt / epochN.pt are extra copies
                os.replace(path, wdir / path.name)
        finally:
            self.wdir, self.last, self.best = wdir, last, best
            shutil.rmtree(staging, ignore_errors=True)
        return saved

    def resume_training(self, ckpt: Any) -> None:
        """Ultralytics' resume (optimizer, EMA, epoch, early stopping), with a clear error for a finished run."""
        if ckpt is not None and self.resume:
            start = int(ckpt.get("epoch", -1)) + 1
            if not 0 < start < self.epochs:
                raise ConfigError(
                    f"resume: {self.args.resume} holds a finished run (epoch {start} of {self.epochs}; a "
                    "completed run's last.pt has no optimizer state): nothing to resume. Start a new run"
                )
        super().resume_training(ckpt)
        if ckpt is not None and self.resume and RANK in {-1, 0}:
            remove_stale_temporaries(self.wdir)  # what a kill during the last checkpoint write left
            self._vp_trim_results(int(ckpt.get("epoch", -1)) + 1)

    def _vp_trim_results(self, epochs_done: int) -> None:
        """Drop ``results.csv`` rows past the checkpoint's epoch before training goes on.

        Ultralytics appends an epoch's row before it writes the checkpoint; a run killed in between resumes from
        the previous checkpoint and would append a second, different row for the same epoch.
        """
        csv = Path(self.csv)
        if not csv.is_file():
            return
        lines = csv.read_text(encoding="utf-8").splitlines(keepends=True)
        keep = lines[:1] + [row for row in lines[1:] if _row_epoch(row) <= epochs_done]
        if len(keep) != len(lines):
            atomic_write(csv, lambda tmp: Path(tmp).write_text("".join(keep), encoding="utf-8"))

    def _load_checkpoint_state(self, ckpt: dict[str, Any]) -> None:
        """Ultralytics loads the whole float16 EMA; the frozen tensors are then reset to the exact base."""
        super()._load_checkpoint_state(ckpt)
        if self.ema is not None and self.vp_plan is not None:
            resume.restore_frozen(self.ema.ema, self.vp_model(), self.vp_plan)


def strip_atomic(path: Path, updates: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ultralytics' ``strip_optimizer`` (final checkpoint: EMA as model, no optimizer), written atomically: a run
    killed mid-write keeps the previous complete file."""
    from ultralytics.utils.torch_utils import strip_optimizer

    staging = path.with_name(f".{path.name}.strip")
    try:
        out = strip_optimizer(path, str(staging), updates=updates)
        if staging.is_file():
            os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return out


def _row_epoch(row: str) -> float:
    """The epoch (counted from 1) of one ``results.csv`` row; an unreadable row counts as past every epoch."""
    try:
        return float(row.split(",", 1)[0])
    except ValueError:
        return float("inf")
