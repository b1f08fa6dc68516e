"""Optimizer and schedule: only trainable parameters, one group per strategy owner (timm factories).

Groups: ``head`` (the classifier: ``optim.head_lr``) and one per other owner in the trainability plan
(``lora``, ``vpt``, ``bitfit``, ``norm``, ``full``...: ``optim.lr``), each split into decay / no-decay
(biases and 1-D tensors get no weight decay). timm's scheduler keeps per-group ratios via ``lr_scale``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from torch import nn

__all__ = ["param_groups", "build_optimizer", "build_scheduler", "group_lrs"]


def _in_modules(name: str, modules: tuple[str, ...]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def param_groups(model: nn.Module, plan: Any, head_modules: tuple[str, ...], optim: Any) -> list[dict]:
    """Parameter groups for the optimizer: trainable tensors only, grouped by owner, decay split."""
    lr = optim.lr
    head_lr = optim.head_lr or lr
    buckets: dict[tuple[str, bool], list] = defaultdict(list)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        owner = "head" if _in_modules(name, head_modules) else plan.trainable.get(name, "base")
        no_decay = p.ndim <= 1 or name.endswith(".bias")
        buckets[(owner, no_decay)].append(p)
    groups = []
    for (owner, no_decay), params in sorted(buckets.items()):
        group_lr = head_lr if owner == "head" else lr
        groups.append({"params": params, "name": owner + ("/no_decay" if no_decay else ""), "owner": owner,
                       "weight_decay": 0.0 if no_decay else optim.weight_decay,
                       # timm's scheduler multiplies its value by lr_scale: the base lr stays optim.lr.
                       "lr": lr, "lr_scale": group_lr / lr})
    if not groups:
        from ...errors import ConfigError

        raise ConfigError("nothing to train: the strategies left no trainable parameter")
    return groups


def build_optimizer(groups: list[dict], optim: Any) -> Any:
    """timm ``create_optimizer_v2`` on ready-made groups (AdamW or SGD with momentum)."""
    from timm.optim import create_optimizer_v2

    kwargs: dict[str, Any] = {"momentum": optim.momentum} if optim.name == "sgd" else {}
    return create_optimizer_v2(groups, opt=optim.name, lr=optim.lr, weight_decay=optim.weight_decay,
                               **kwargs)


def build_scheduler(optimizer: Any, optim: Any, epochs: int, updates_per_epoch: int) -> Any:
    """timm ``create_scheduler_v2``: cosine (or constant) with linear warmup, stepped every update."""
    from timm.scheduler import create_scheduler_v2

    sched = "cosine" if optim.scheduler == "cosine" else "step"
    extra: dict[str, Any] = {} if sched == "cosine" else {"decay_epochs": 10 * epochs + 1, "decay_rate": 1.0}
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=sched, num_epochs=epochs, min_lr=optim.min_lr,
        warmup_lr=min(optim.warmup_lr, optim.lr), warmup_epochs=min(optim.warmup_epochs, max(epochs - 1, 0)),
        step_on_epochs=False, updates_per_epoch=max(updates_per_epoch, 1), **extra,
    )
    scheduler.step_update(num_updates=0)  # apply warmup and per-group lr_scale before the first step
    return scheduler


def group_lrs(optimizer: Any) -> dict[str, float]:
    """Current learning rate per owner (the decay group's value; both halves share it)."""
    out: dict[str, float] = {}
    for g in optimizer.param_groups:
        out.setdefault(g.get("owner", g.get("name", "group")), float(g["lr"]))
    return out
