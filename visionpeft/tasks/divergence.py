"""A loss that becomes non-finite stops the run at once: one rule for every task's training loop.

Without it a NaN/inf loss (a learning rate far too high, fp16 overflow, a broken image) silently turns every
weight into NaN and the run reports chance accuracy (classification), or Ultralytics retries from ``last.pt``
up to three times and on the first epoch carries on regardless (Ultralytics tasks). Here the step that produced
it raises :class:`~visionpeft.errors.TrainingDivergedError` before its update is applied where the loop allows
it; nothing is written after it, so the last checkpoint and the metrics of every finished epoch stay as they
were, and the CLI exits with status 2 and one line naming the epoch, the batch and the loss.

The validation loss is checked the same way after each epoch (:func:`check_val_loss`): training in train mode can
stay finite while what the model computes in eval mode is not (BatchNorm running statistics that overflowed, an
EMA copy gone non-finite), and the run then reported chance accuracy / mAP 0 and exited 0. It stops before that
epoch's checkpoint, adapter or metrics are written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from ..errors import TrainingDivergedError
from .distributed import is_distributed

__all__ = ["loss_is_finite", "check_loss", "check_val_loss", "kept_checkpoint"]


def loss_is_finite(loss: torch.Tensor | float) -> bool:
    """Whether ``loss`` is finite on every rank (under DDP all ranks agree, so none waits for a stopped one)."""
    value = loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
    finite = bool(torch.isfinite(value).all())
    if is_distributed():
        import torch.distributed as dist

        flag = torch.tensor([0.0 if finite else 1.0], device=value.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        finite = float(flag) == 0.0
    return finite


def check_loss(loss: torch.Tensor | float, *, epoch: int, epochs: int, batch: int,
               parts: Mapping[str, float] | None = None, kept: Callable[[], str] | None = None) -> None:
    """Raise :class:`TrainingDivergedError` unless ``loss`` is finite (on every rank).

    Args:
        epoch / batch: counted from 1, as the progress lines and the report count them.
        parts: the loss's components by name (Ultralytics' ``box_loss``, ``cls_loss`` ...), shown when given.
        kept: says what the run directory keeps (:func:`kept_checkpoint`); called only when the loss is not finite.
    """
    if loss_is_finite(loss):
        return
    value = loss.detach().float().sum().item() if isinstance(loss, torch.Tensor) else float(loss)
    kept_text = kept() if kept is not None else ""
    shown = ", ".join(f"{k} {_num(v)}" for k, v in (parts or {}).items())
    raise TrainingDivergedError(
        f"training stopped: the loss became {_num(value)} at epoch {epoch}/{epochs}, batch {batch}"
        + (f" ({shown})" if shown else "") + (f"; {kept_text}" if kept_text else "")
        + ". Lower the learning rate (optim.lr / a strategy's lr / ultralytics.lr0), turn off mixed precision, or "
        "check the data"
    )


def check_val_loss(losses: Mapping[str, float] | None, *, epoch: int, epochs: int,
                   device: torch.device | str | None = None, kept: Callable[[], str] | None = None) -> None:
    """Raise :class:`TrainingDivergedError` unless every validation loss of ``epoch`` (counted from 1) is finite.

    ``losses``: name -> value (``None`` or empty on a rank without metrics: Ultralytics validates on rank 0 only);
    under DDP all ranks agree (``device``: where the flag is reduced, the rank's GPU under NCCL).
    """
    values = [float(v) for v in (losses or {}).values()]
    if loss_is_finite(torch.tensor(values or [0.0], device=device)):
        return
    shown = ", ".join(f"{k} {_num(v)}" for k, v in (losses or {}).items())
    kept_text = kept() if kept is not None else ""
    raise TrainingDivergedError(
        f"training stopped: the validation loss became non-finite after epoch {epoch}/{epochs} ({shown}): the "
        "model's weights or normalisation statistics are no longer finite" + (f"; {kept_text}" if kept_text else "")
        + ". Lower the learning rate (optim.lr / a strategy's lr / ultralytics.lr0), turn off mixed precision, or "
        "check the data"
    )


def kept_checkpoint(path: Path, finished_epochs: int) -> str:
    """What a stopped run keeps: its last checkpoint (written after the last finished epoch), or nothing."""
    if finished_epochs > 0 and path.is_file():
        return f"the last good checkpoint, after epoch {finished_epochs}, is kept in {path}"
    if finished_epochs > 0:
        return f"{finished_epochs} epochs had finished; their metrics are kept (no checkpoint: saving was off)"
    return "no epoch had finished, so no checkpoint was written"


def _num(value: float) -> str:
    return repr(float(value)) if not math.isfinite(float(value)) else f"{float(value):.4g}"
