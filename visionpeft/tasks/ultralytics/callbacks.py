"""Callbacks hooked into Ultralytics' trainer: plan checks, timing/memory, TensorBoard, adapter saving.

Ultralytics calls each callback with the trainer. Everything here only reads the trainer (the plan is
enforced by the trainer subclass itself); a violated plan raises :class:`PlanViolationError`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import PlanViolationError
from ..divergence import check_loss, check_val_loss, kept_checkpoint
from .run_record import write_run_recipe

__all__ = ["PerfMeter", "metrics_from_ultralytics", "make_callbacks"]

def metrics_from_ultralytics(metrics: dict[str, Any] | None, task: str) -> dict[str, float]:
    """visionpeft's metric names from Ultralytics' metric dict, as the task's row of
    :data:`visionpeft.ultralytics_tasks.TASKS` names them (detect: ``map50``, ``map50_95``, ``precision``,
    ``recall``; segment / pose add ``mask_*`` / ``pose_*``; classify: ``top1``, ``top5``)."""
    from ...ultralytics_tasks import get

    return get(task).from_ultralytics(metrics)


@dataclass
class PerfMeter:
    """Step time, throughput and peak training memory of a run.

    ``peak_mem_mb`` is :mod:`visionpeft.profiling`'s, the same quantity as classification's: one training step's
    footprint of this model (:class:`~visionpeft.profiling.StepMemory`), measured on the first step after the
    trainer's first optimizer update (``PeftTrainerMixin.optimizer_step`` counts them).
    """

    step_times: list[float] = field(default_factory=list)
    images: int = 0
    train_seconds: float = 0.0
    _t_step: float = 0.0
    _t_start: float = 0.0
    _memory: Any = None

    @property
    def peak_mem_mb(self) -> float:
        return self._memory.peak_mb if self._memory is not None else 0.0

    def start(self, device: torch.device) -> None:
        from ...profiling import StepMemory

        self._memory = StepMemory(device)
        self._t_start = time.perf_counter()

    def step_start(self, model: torch.nn.Module, optimizer: Any, updates: int) -> None:
        if self._memory is not None:
            self._memory.begin(model, optimizer, updates)
        self._t_step = time.perf_counter()

    def step_end(self, batch_size: int) -> None:
        if self._memory is not None:
            self._memory.end()
        self.step_times.append(time.perf_counter() - self._t_step)
        self.images += batch_size

    def stop(self) -> None:
        if self._memory is not None:
            self._memory.abort()  # a step begun but never ended (training stopped inside it)
        self.train_seconds = time.perf_counter() - self._t_start

    @property
    def step_time_s(self) -> float:
        # The first steps include lazy initialisation (allocator warm-up, cudnn autotune): skip them.
        times = self.step_times[2:] if len(self.step_times) > 4 else self.step_times
        return sum(times) / max(len(times), 1)

    @property
    def img_per_s(self) -> float:
        return self.images / max(sum(self.step_times), 1e-9)


def _check_optimizer(trainer: Any, model: torch.nn.Module) -> None:
    """The optimizer must hold exactly the plan's trainable parameters."""
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if in_opt != trainable:
        names = {id(p): n for n, p in model.named_parameters()}
        extra = [names.get(i, "?") for i in in_opt - trainable][:5]
        missing = [names.get(i, "?") for i in trainable - in_opt][:5]
        raise PlanViolationError(
            f"the optimizer does not hold exactly the trainable parameters: frozen in optimizer {extra}, "
            f"trainable but not optimized {missing}"
        )


def on_pretrain_routine_end(tr: Any) -> None:
    """After Ultralytics' setup: enforce and check the plan, check the optimizer, log the plan and hparams; a run
    started from Python gets its ``recipe.yaml`` (:mod:`.run_record`)."""
    model = tr.vp_model()
    tr.vp_plan.enforce(model)
    tr.vp_plan.check(model)
    _check_optimizer(tr, model)
    tr.vp_write_plan()
    write_run_recipe(tr)
    tr.vp_lr_tags = lr_tags(tr.optimizer, model, tr.vp_plan)
    if tr.vp_logger is not None:
        tr.vp_logger.plan(tr.vp_plan)
        tr.vp_logger.session_start(tr.vp_hparams())
    tr.vp_perf.start(tr.device)


def lr_tags(optimizer: Any, model: torch.nn.Module, plan: Any) -> list[str | None]:
    """``optim/lr_<owners>`` per optimizer group (``None``: empty group), e.g. ``optim/lr_lora+head``.

    Ultralytics groups parameters by kind (``weight`` with decay, ``bn`` and ``bias`` without); each group is
    named by the strategies that own its parameters, plus its kind when two groups hold the same owners.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    labels: list[str | None] = []
    for group in optimizer.param_groups:
        owners = sorted({plan.trainable.get(names.get(id(p), ""), "base") for p in group["params"]})
        labels.append("+".join(owners) if owners else None)
    tags: list[str | None] = []
    for i, (label, group) in enumerate(zip(labels, optimizer.param_groups)):
        if label is None:
            tags.append(None)
            continue
        shared = labels.count(label) > 1
        kind = str(group.get("param_group", f"group{i}"))
        if kind in {"weight", "muon"} and not group.get("weight_decay"):
            kind += "_no_decay"  # 1-D tensors (SSF scale/shift ...) split from Ultralytics' decayed group
        tags.append(f"optim/lr_{label}_{kind}" if shared else f"optim/lr_{label}")
    return tags


def _step(tr: Any) -> int:
    """TensorBoard's x for the epoch that just ended: training batches so far (Ultralytics' ``ni`` + 1)."""
    return (int(tr.epoch) + 1) * len(tr.train_loader)


def on_train_epoch_start(tr: Any) -> None:
    """Every epoch: the plan and the optimizer must still hold (else PlanViolationError)."""
    # Checked every epoch: anything that flipped requires_grad or dropped a BN policy fails the run.
    model = tr.vp_model()
    tr.vp_plan.check(model)
    _check_optimizer(tr, model)
    tr.vp_batch = 0


def on_train_batch_start(tr: Any) -> None:
    """Start timing one training step."""
    tr.vp_batch = getattr(tr, "vp_batch", 0) + 1
    tr.vp_perf.step_start(tr.vp_model(), tr.optimizer, tr.vp_updates)


def on_train_batch_end(tr: Any) -> None:
    """Stop timing one training step (and finish the memory measurement after the first); a non-finite loss
    stops the run (batches accumulated without an update are checked here; updates before they happen)."""
    check_train_loss(tr)
    tr.vp_perf.step_end(int(tr.batch_size))


def check_train_loss(tr: Any) -> None:
    """Raise :class:`TrainingDivergedError` if the current batch's loss is not finite (see ``tasks/divergence``).

    Replaces Ultralytics' NaN recovery (reload ``last.pt`` and retry up to 3 times; on the first epoch, carry on):
    a diverged run stops at the batch, leaving ``weights/last.pt`` and ``results.csv`` as the last epoch wrote them.
    """
    if getattr(tr, "loss", None) is None:
        return
    items = getattr(tr, "loss_items", None)  # Ultralytics 8.4: {name: tensor}; older: a tensor beside loss_names
    if isinstance(items, dict):
        parts = {str(k): float(v) for k, v in items.items()}
    elif isinstance(items, torch.Tensor):
        parts = dict(zip(getattr(tr, "loss_names", ()), items.detach().float().cpu().tolist()))
    else:
        parts = None
    check_loss(tr.loss, epoch=int(tr.epoch) + 1, epochs=int(tr.epochs), batch=getattr(tr, "vp_batch", 0),
               parts=parts, kept=lambda: kept_checkpoint(Path(tr.last), int(tr.epoch)))


def check_val_losses(tr: Any, metrics: dict[str, Any] | None) -> None:
    """Raise :class:`TrainingDivergedError` if a validation loss (``val/box_loss`` ...) of this epoch is not finite,
    before Ultralytics saves the epoch (its checkpoint writer turns inf/NaN into finite numbers, and its NaN
    recovery looks at the train loss and fitness only, so the run finished with mAP 0 and exit 0)."""
    losses = {k: v for k, v in (metrics or {}).items() if k.startswith("val/") and "loss" in k}
    check_val_loss(losses, epoch=int(tr.epoch) + 1, epochs=int(tr.epochs), device=getattr(tr, "device", None),
                   kept=lambda: kept_checkpoint(Path(tr.last), int(tr.epoch)))


def on_train_epoch_end(tr: Any) -> None:
    """TensorBoard: losses, learning rate per group, throughput, memory, step time (x: batches so far)."""
    log = tr.vp_logger
    if log is None:
        return
    step = tr.vp_last_step = _step(tr)
    losses = {f"loss/train_{k.removesuffix('_loss')}": float(v) for k, v in (tr.tloss or {}).items()}
    if losses:
        log.scalar("loss/train", sum(losses.values()), step)
    log.scalars(losses, step)
    tags = getattr(tr, "vp_lr_tags", None) or [f"optim/lr_group{i}" for i in range(len(tr.optimizer.param_groups))]
    log.scalars({tag: float(g["lr"]) for tag, g in zip(tags, tr.optimizer.param_groups) if tag}, step)
    log.scalar("perf/img_per_s", tr.vp_perf.img_per_s, step)
    log.scalar("perf/peak_mem_mb", tr.vp_perf.peak_mem_mb, step)
    log.scalar("perf/step_time_s", tr.vp_perf.step_time_s, step)


def on_fit_epoch_end(tr: Any) -> None:
    """TensorBoard: validation mAP50-95 / mAP50 / precision / recall and losses after each epoch.

    The final re-validation of ``best.pt`` (``tr.vp_final_eval``) goes to ``result/*`` at the last step
    instead, so it is not mistaken for one more epoch.
    """
    log = tr.vp_logger
    if log is None or not tr.metrics:
        return
    metrics = metrics_from_ultralytics(tr.metrics, tr.args.task)
    if getattr(tr, "vp_final_eval", False):
        log.scalars({f"result/{k}": v for k, v in metrics.items()}, getattr(tr, "vp_last_step", _step(tr)))
        log.flush()
        return
    step = _step(tr)
    log.scalars({f"metrics/{k}": v for k, v in metrics.items()}, step)
    losses = {f"loss/val_{k[4:].removesuffix('_loss')}": float(v) for k, v in tr.metrics.items()
              if k.startswith("val/")}
    if losses:
        log.scalar("loss/val", sum(losses.values()), step)
    log.scalars(losses, step)
    log.scalar("progress/epoch", int(tr.epoch) + 1, step)
    log.flush()


def on_model_save(tr: Any) -> None:
    """Save the EMA adapter to ``adapter/`` whenever Ultralytics saves a new ``best.pt``."""
    # Same rule as Ultralytics' best.pt: this epoch's fitness is the best so far.
    if tr.best_fitness is not None and tr.best_fitness == tr.fitness:
        tr.vp_save_adapter("adapter")


def on_train_end(tr: Any) -> None:
    """Save ``adapter_last/`` (and ``adapter/`` if no validation ran), ``metrics.json``, hparams; close TensorBoard."""
    tr.vp_perf.stop()
    dataset = getattr(getattr(tr, "train_loader", None), "dataset", None)
    if dataset is not None and tr.vp_perf.step_times:  # exact count (the last batch of an epoch is smaller)
        tr.vp_perf.images = len(dataset) * (int(tr.epoch) + 1 - int(tr.start_epoch))
    tr.vp_save_adapter("adapter_last")
    if not (tr.vp_run_dir / "adapter" / "adapter.json").exists():
        tr.vp_save_adapter("adapter")  # no validation ran (val=False): the last adapter is the result
    # Written here (rank 0), not by the runner: after a DDP launch the launcher holds no trained state.
    tr.vp_result().save(tr.vp_run_dir / "metrics.json")
    if tr.vp_logger is not None:
        tr.vp_logger.session_end(ok=True)
        tr.vp_logger.close()


def make_callbacks() -> dict[str, Callable[[Any], None]]:
    """Callbacks of :class:`~visionpeft.tasks.ultralytics.trainer.PeftTrainerMixin` (by event name); each receives
    the trainer from Ultralytics."""
    return {
        "on_pretrain_routine_end": on_pretrain_routine_end,
        "on_train_epoch_start": on_train_epoch_start,
        "on_train_batch_start": on_train_batch_start,
        "on_train_batch_end": on_train_batch_end,
        "on_train_epoch_end": on_train_epoch_end,
        "on_fit_epoch_end": on_fit_epoch_end,
        "on_model_save": on_model_save,
        "on_train_end": on_train_end,
    }


def write_json(path: Path, data: Any) -> None:
    """Pretty JSON (helper shared with the runner)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
