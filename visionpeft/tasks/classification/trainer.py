"""The classification training loop. Everything that is not "forward, backward, step" is a hook.

Hooks (see ``hooks.py``) receive the trainer and read what they need from it: TensorBoard logging,
checkpoints, early stopping, progress and memory measurement all live there.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..divergence import check_loss, check_val_loss
from .metrics import Accumulator

__all__ = ["Hook", "Trainer", "TrainState", "autocast_dtype", "evaluate_model"]


class Hook:
    """Callback base: override what you need. ``trainer.state`` carries the progress."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer, loss: float, images: int) -> None: ...
    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...

    def step_context(self, trainer: Trainer) -> contextlib.AbstractContextManager:
        """A context wrapped around one training step (forward, backward, update): e.g. memory meters."""
        return contextlib.nullcontext()


@dataclass
class TrainState:
    """Progress of a run (checkpointed by ``last.pt``)."""

    epoch: int = 0  # the epoch being trained (0-based)
    updates: int = 0  # optimizer steps so far
    images: int = 0  # training images seen in this process
    train_time: float = 0.0  # seconds inside train epochs (validation excluded)
    step_times: list[float] = field(default_factory=list)
    best_metric: float = float("-inf")
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)
    stop: bool = False

    @property
    def batches(self) -> int:
        """Training batches processed so far, across resumes (one step time per batch): TensorBoard's x."""
        return len(self.step_times)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``bf16`` when asked, or on ``auto`` when a CUDA device supports it; ``None`` means fp32."""
    if amp == "bf16":
        return torch.bfloat16
    if amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


class Trainer:
    """Train ``model`` on ``train_loader``; validate on ``val_loader`` after every epoch.

    Args:
        model: the module that maps a batch to logits (the adapted model, its DDP wrapper, or the head
            alone when features are cached).
        optimizer / scheduler: from ``optim.py``; the scheduler is stepped every optimizer update.
        loss_fn: e.g. ``nn.CrossEntropyLoss(label_smoothing=...)``.
        cfg: the recipe's ``train`` section (epochs, grad_accum, clip_grad, amp, max_steps_per_epoch).
        eval_model: a callable returning the module to validate (the EMA copy when EMA is on).
        after_step: called after each optimizer update (EMA update, plan checks).
        set_epoch: called with the epoch index before it starts (distributed sampler shuffling).
    """

    def __init__(self, model: nn.Module, optimizer: Any, scheduler: Any, loss_fn: nn.Module,
                 train_loader: Iterable, val_loader: Iterable, cfg: Any, device: torch.device,
                 num_classes: int, class_names: tuple[str, ...], hooks: list[Hook] = (),
                 eval_model: Callable[[], nn.Module] | None = None,
                 after_step: Callable[[Trainer], None] | None = None,
                 set_epoch: Callable[[int], None] | None = None) -> None:
        self.model, self.optimizer, self.scheduler, self.loss_fn = model, optimizer, scheduler, loss_fn
        self.train_loader, self.val_loader, self.cfg, self.device = train_loader, val_loader, cfg, device
        self.num_classes, self.class_names, self.hooks = num_classes, class_names, list(hooks)
        self.eval_model = eval_model or (lambda: self.model)
        self.after_step, self.set_epoch = after_step, set_epoch
        self.amp_dtype = autocast_dtype(cfg.amp, device)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.state = TrainState()
        #: What the run directory keeps if the loss becomes non-finite (set by the runner, which knows the files).
        self.kept: Callable[[], str] | None = None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _call(self, event: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)

    def fit(self, start_epoch: int = 0) -> TrainState:
        """Train from ``start_epoch`` (> 0 when resuming) to ``cfg.epochs`` or an early stop."""
        self._call("on_fit_start")
        # Wall time since training started (validation included), continued across a resume: the x axis of
        # the compare report's time-to-accuracy.
        elapsed0 = self.state.history[-1].get("elapsed_seconds", 0.0) if self.state.history else 0.0
        t0 = time.perf_counter()
        for epoch in range(start_epoch, self.cfg.epochs):
            self.state.epoch = epoch
            if self.set_epoch is not None:
                self.set_epoch(epoch)
            self._call("on_epoch_start")
            before = self.state.train_time
            self.train_epoch()
            metrics = self.evaluate(self.val_loader)
            # Before this epoch's history, checkpoint or metrics: a model whose eval outputs are not finite.
            check_val_loss({"loss": metrics["loss"]}, epoch=epoch + 1, epochs=self.cfg.epochs, device=self.device,
                           kept=self.kept)
            self.state.history.append({"epoch": epoch, "train_seconds": self.state.train_time - before,
                                       "elapsed_seconds": elapsed0 + time.perf_counter() - t0,
                                       **{k: v for k, v in metrics.items() if "/" not in k}})
            self._call("on_epoch_end", metrics)
            if self.state.stop:
                break
        self._call("on_fit_end")
        return self.state

    def train_epoch(self) -> None:
        """One pass over the training data with gradient accumulation, clipping and per-update scheduling."""
        self.model.train()
        accum, limit = self.cfg.grad_accum, self.cfg.max_steps_per_epoch
        steps = len(self.train_loader) if limit is None else min(limit * accum, len(self.train_loader))
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(self.train_loader):
            if i >= steps:
                break
            t0 = time.perf_counter()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with contextlib.ExitStack() as stack:
                for hook in self.hooks:
                    stack.enter_context(hook.step_context(self))
                with self._autocast():
                    loss = self.loss_fn(self.model(x).float(), y)
                # Before backward: a NaN step never reaches the weights, the optimizer state or the EMA copy.
                check_loss(loss, epoch=self.state.epoch + 1, epochs=self.cfg.epochs, batch=i + 1, kept=self.kept)
                (loss / accum).backward()
                if (i + 1) % accum == 0 or i + 1 == steps:
                    self._update()
            self.state.images += len(y)
            self.state.step_times.append(time.perf_counter() - t0)
            self._call("on_step_end", float(loss.detach()), len(y))
        self.state.train_time += time.perf_counter() - start

    def _update(self) -> None:
        if self.cfg.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.updates += 1
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.state.updates)
        if self.after_step is not None:
            self.after_step(self)

    def evaluate(self, loader: Iterable) -> dict[str, float]:
        """Loss, top-1/top-5, mean per-class and per-class accuracy of ``eval_model()`` on ``loader``."""
        return evaluate_model(self.eval_model(), loader, self.device, self.class_names, self.amp_dtype)


@torch.no_grad()
def evaluate_model(model: nn.Module, loader: Iterable, device: torch.device, class_names: tuple[str, ...],
                   amp_dtype: torch.dtype | None = None, acc: Accumulator | None = None) -> dict[str, float]:
    """Evaluate ``model`` in eval mode on ``loader`` (metrics summed over DDP ranks).

    ``acc``: the accumulator to fill (one with ``keep_examples`` keeps per-example results); default a new one.
    """
    was_training = model.training
    model.eval()
    acc = acc if acc is not None else Accumulator(len(class_names))
    loss_fn = nn.CrossEntropyLoss(reduction="sum")  # validation loss without label smoothing
    ctx = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
           else contextlib.nullcontext())
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with ctx:
            logits = model(x).float()
        acc.update(logits, y, float(loss_fn(logits, y)))
    model.train(was_training)
    return acc.compute(class_names)
