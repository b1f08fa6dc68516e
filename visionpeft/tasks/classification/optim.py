"""Optimizer and schedule: only trainable parameters, grouped by strategy owner (timm factories).

Each trainable tensor's learning rate and weight decay come from :func:`visionpeft.optim_settings.param_settings`
(strategy entry ``lr``/``weight_decay`` > ``optim.head_lr`` for the head > ``optim.lr`` > the method's default;
no decay for biases, 1-D tensors, timm's ``no_weight_decay()`` and VPT prompts). One group per
(owner, learning rate, weight decay). Every group starts at the largest rate and carries ``lr_scale``: timm's
scheduler multiplies its value by it, so warmup and cosine keep the ratios between groups.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from torch import nn

__all__ = ["param_groups", "build_optimizer", "build_scheduler", "group_lrs", "base_lr"]


def param_groups(model: nn.Module, plan: Any, head_modules: tuple[str, ...], optim: Any,
                 configs: list[Any] | None = None) -> list[dict]:
    """Parameter groups for the optimizer: trainable tensors only, by owner, lr and weight decay.

    ``configs`` are the applied strategy configs (default: those stored on the adapted ``model``).
    """
    from ...api import get_state
    from ...optim_settings import param_settings

    if configs is None:
        state = get_state(model)
        configs = list(state.configs) if state is not None else []
    settings = param_settings(model, plan, configs, lr=optim.lr, weight_decay=optim.weight_decay,
                              optimizer=optim.name, head_lr=optim.head_lr, head_modules=head_modules)
    params = dict(model.named_parameters())
    buckets: dict[tuple[str, float, float], list] = defaultdict(list)
    for name, s in settings.items():
        buckets[(s.owner, s.lr, s.weight_decay)].append(params[name])
    if not buckets:
        from ...errors import ConfigError

        raise ConfigError("nothing to train: the strategies left no trainable parameter")
    top = max(lr for _, lr, _ in buckets)
    groups = []
    for (owner, lr, wd), ps in sorted(buckets.items(), key=lambda kv: (kv[0][0], kv[0][2] == 0, -kv[0][1])):
        # timm's scheduler multiplies its value by lr_scale: every group starts from the same base rate.
        groups.append({"params": ps, "name": owner + ("/no_decay" if wd == 0 else ""), "owner": owner,
                       "weight_decay": wd, "lr": top, "lr_scale": lr / top})
    return groups


def base_lr(groups: list[dict]) -> float:
    """The rate the schedule runs on (the largest group rate; each group scales it by ``lr_scale``)."""
    return float(max(g["lr"] for g in groups))


def build_optimizer(groups: list[dict], optim: Any) -> Any:
    """timm ``create_optimizer_v2`` on ready-made groups (AdamW or SGD with momentum)."""
    from timm.optim import create_optimizer_v2

    kwargs: dict[str, Any] = {"momentum": optim.momentum} if optim.name == "sgd" else {}
    return create_optimizer_v2(groups, opt=optim.name, lr=base_lr(groups), weight_decay=optim.weight_decay,
                               **kwargs)


def build_scheduler(optimizer: Any, optim: Any, epochs: int, updates_per_epoch: int) -> Any:
    """timm ``create_scheduler_v2``: cosine (or constant) with linear warmup, stepped every update."""
    from timm.scheduler import create_scheduler_v2

    sched = "cosine" if optim.scheduler == "cosine" else "step"
    extra: dict[str, Any] = {} if sched == "cosine" else {"decay_epochs": 10 * epochs + 1, "decay_rate": 1.0}
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=sched, num_epochs=epochs, min_lr=optim.min_lr,
        warmup_lr=min(optim.warmup_lr, base_lr(optimizer.param_groups)),
        warmup_epochs=min(optim.warmup_epochs, max(epochs - 1, 0)),
        step_on_epochs=False, updates_per_epoch=max(updates_per_epoch, 1), **extra,
    )
    scheduler.step_update(num_updates=0)  # apply warmup and per-group lr_scale before the first step
    return scheduler


def group_lrs(optimizer: Any) -> dict[str, float]:
    """Current learning rate per owner (its first group's value)."""
    out: dict[str, float] = {}
    for g in optimizer.param_groups:
        out.setdefault(g.get("owner", g.get("name", "group")), float(g["lr"]))
    return out
