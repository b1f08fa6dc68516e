"""Trainer hooks: TensorBoard, checkpoints (best + atomic last), early stopping, progress, peak memory."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ...checkpoint import save_tensors, save_training_state
from ...logging.tensorboard import RunLogger
from .optim import group_lrs
from .trainer import Hook, Trainer

__all__ = ["TensorBoardHook", "CheckpointHook", "EarlyStopping", "ProgressHook", "PeakMemory", "LogHook"]

log = logging.getLogger("visionpeft.train")


class PeakMemory(Hook):
    """Peak training memory of the run: ``peak_mem_mb`` as :mod:`visionpeft.profiling` defines it for both tasks
    (one training step's footprint of this model, measured on the first step after the first optimizer update,
    on CUDA and on CPU alike; :class:`~visionpeft.profiling.StepMemory`)."""

    def __init__(self, device: torch.device) -> None:
        from ...profiling import StepMemory

        self.meter = StepMemory(device)

    @property
    def peak_mb(self) -> float:
        return self.meter.peak_mb

    def step_context(self, trainer: Trainer) -> contextlib.AbstractContextManager:
        if self.meter.measured or trainer.state.updates < 1:
            return contextlib.nullcontext()
        return self._measure(trainer)

    @contextlib.contextmanager
    def _measure(self, trainer: Trainer) -> Iterator[None]:
        model = trainer.model
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        self.meter.begin(model, trainer.optimizer, trainer.state.updates)
        try:
            yield
        except BaseException:
            self.meter.abort()
            raise
        self.meter.end()

    def current(self) -> float:
        """The measured value so far (0 before the measured step)."""
        return self.meter.peak_mb


class TensorBoardHook(Hook):
    """Scalars at step = training batches so far (the tag vocabulary is in :mod:`visionpeft.logging.tensorboard`).

    ``loss/train`` and ``optim/lr_<owner>`` every ``every`` batches (and the first); after each epoch
    ``loss/val``, ``metrics/*``, ``val_class/*``, ``perf/*`` and ``progress/epoch``.
    """

    #: Validation metrics shown as ``metrics/<name>`` (all fractions in 0-1).
    metrics = ("top1", "top5", "mean_class_acc")

    def __init__(self, logger: RunLogger, memory: PeakMemory, every: int = 10) -> None:
        self.logger, self.memory, self.every = logger, memory, every
        self._step = 0
        self._images_at_epoch = 0
        self._time_at_epoch = 0.0
        self._batches_at_epoch = 0

    def on_epoch_start(self, trainer: Trainer) -> None:
        st = trainer.state
        self._images_at_epoch, self._time_at_epoch, self._batches_at_epoch = st.images, st.train_time, st.batches

    def on_step_end(self, trainer: Trainer, loss: float, images: int) -> None:
        self._step += 1
        if self._step % self.every == 0 or self._step == 1:
            step = trainer.state.batches
            self.logger.scalar("loss/train", loss, step)
            for group, lr in group_lrs(trainer.optimizer).items():
                self.logger.scalar(f"optim/lr_{group}", lr, step)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        st = trainer.state
        step = st.batches
        self.logger.scalar("loss/val", metrics["loss"], step)
        self.logger.scalars({f"metrics/{k}": metrics[k] for k in self.metrics if k in metrics}, step)
        per_class = {f"val_class/{k[4:]}": v for k, v in metrics.items() if k.startswith("acc/")}
        if len(per_class) <= 100:  # one chart per class is useless beyond that; metrics.json keeps them
            self.logger.scalars(per_class, step)
        seconds = st.train_time - self._time_at_epoch
        images = st.images - self._images_at_epoch
        times = st.step_times[self._batches_at_epoch:]
        self.logger.scalar("perf/img_per_s", images / max(seconds, 1e-9), step)
        self.logger.scalar("perf/peak_mem_mb", self.memory.current(), step)
        self.logger.scalar("perf/step_time_s", sum(times) / max(len(times), 1), step)
        self.logger.scalar("progress/epoch", st.epoch + 1, step)
        self.logger.flush()


class CheckpointHook(Hook):
    """Best tensors by ``metric`` into ``best.safetensors``; full training state into ``last.pt``.

    Args:
        tensors: returns the tensors to keep (trainable parameters + BN statistics that train), read
            from the model that is validated (the EMA copy when EMA is on).
        raw_tensors: the live model's tensors, for resuming (the EMA copy is saved separately).
        extra: returns more state to put in ``last.pt`` (the EMA tensors).
    """

    def __init__(self, ckpt_dir: Path, tensors: Callable[[], dict[str, torch.Tensor]],
                 raw_tensors: Callable[[], dict[str, torch.Tensor]], save_last: bool, metric: str = "top1",
                 write: bool = True, extra: Callable[[], dict[str, Any]] | None = None) -> None:
        self.dir, self.tensors, self.raw_tensors = ckpt_dir, tensors, raw_tensors
        self.save_last, self.metric, self.write = save_last, metric, write
        self.extra = extra or dict
        self.best_metrics: dict[str, float] = {}

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        st = trainer.state
        if metrics[self.metric] > st.best_metric:
            st.best_metric, st.best_epoch = metrics[self.metric], st.epoch
            self.best_metrics = dict(metrics)
            if self.write:
                save_tensors(self.tensors(), self.dir / "best.safetensors")
        if self.write and self.save_last:
            state = {k: v for k, v in vars(st).items() if k != "step_times"}
            state["mean_step_time"] = sum(st.step_times) / max(len(st.step_times), 1)
            state["step_count"] = len(st.step_times)
            state["best_metrics"] = self.best_metrics
            save_training_state(self.dir / "last.pt", model_tensors=self.raw_tensors(),
                                optimizer=trainer.optimizer, scheduler=trainer.scheduler, epoch=st.epoch,
                                extra={"state": state, **self.extra()})


class EarlyStopping(Hook):
    """Stop when ``metric`` has not improved for ``patience`` epochs (runs after ``CheckpointHook``)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        st = trainer.state
        if st.epoch - st.best_epoch >= self.patience:
            # Epochs counted from 1, as the progress lines ("epoch 3/10") count them.
            log.info("early stop at epoch %d: no improvement since epoch %d", st.epoch + 1, st.best_epoch + 1)
            st.stop = True


class ProgressHook(Hook):
    """A tqdm bar per epoch with the running loss."""

    def __init__(self, name: str, enabled: bool = True) -> None:
        self.name, self.enabled = name, enabled
        self.bar: Any = None

    def on_epoch_start(self, trainer: Trainer) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        total = len(trainer.train_loader)
        if trainer.cfg.max_steps_per_epoch:
            total = min(total, trainer.cfg.max_steps_per_epoch * trainer.cfg.grad_accum)
        self.bar = tqdm(total=total, desc=f"{self.name} {trainer.state.epoch + 1}/{trainer.cfg.epochs}",
                        leave=False, dynamic_ncols=True)

    def on_step_end(self, trainer: Trainer, loss: float, images: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}")

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class LogHook(Hook):
    """One log line per epoch (rank 0)."""

    def __init__(self, name: str, enabled: bool = True) -> None:
        self.name, self.enabled = name, enabled

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.enabled:
            st = trainer.state
            msg = (f"[{self.name}] epoch {st.epoch + 1}/{trainer.cfg.epochs} val top1 {metrics['top1']:.4f} "
                   f"top5 {metrics['top5']:.4f} loss {metrics['loss']:.4f}")
            print(msg, flush=True)
