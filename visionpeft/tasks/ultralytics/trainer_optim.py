"""The optimizer job of :class:`~.trainer.PeftTrainerMixin`: Ultralytics' optimizer holding only the plan's
trainable tensors, grouped per strategy owner, and no update from a non-finite loss."""

from __future__ import annotations

from typing import Any

from torch import nn
from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import unwrap_model

from ... import api
from ...errors import ConfigError
from ...plan import TrainabilityPlan
from .callbacks import check_train_loss
from .ddp import rewrap_ddp

__all__ = ["OptimizerMixin", "split_groups_by_owner"]


class OptimizerMixin:
    """``build_optimizer`` and ``optimizer_step`` (which also counts ``vp_updates`` for the memory meter)."""

    def build_optimizer(self, model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """Ultralytics' optimizer and parameter groups (weight / bn / bias), holding only the plan's trainable
        parameters, each group split per strategy owner with the owner's ``lr`` / ``weight_decay`` (see
        :func:`split_groups_by_owner`)."""
        if self.vp_plan is None:
            raise ConfigError("the model was not built through get_model, so no strategies were applied")
        self.vp_plan.enforce(unwrap_model(model))
        if model is self.model and isinstance(model, nn.parallel.DistributedDataParallel):
            self.model = model = rewrap_ddp(model)  # DDP was built while everything was trainable
        optimizer = super().build_optimizer(model, *args, **kwargs)
        total = sum(len(g["params"]) for g in optimizer.param_groups)
        state = api.get_state(unwrap_model(model))
        wd_scale = self.batch_size * self.accumulate / self.args.nbs  # Ultralytics' own weight-decay scaling
        optimizer.param_groups[:] = split_groups_by_owner(
            optimizer.param_groups, unwrap_model(model), self.vp_plan, state.configs if state else [],
            base_lr=float(self.args.lr0), wd_scale=wd_scale)
        if RANK in {-1, 0}:
            kept = sum(len(g["params"]) for g in optimizer.param_groups)
            lrs = sorted({(g["owner"], g["param_group"], round(g["lr"], 8)) for g in optimizer.param_groups})
            LOGGER.info(f"visionpeft: optimizer holds {kept} trainable tensors ({total - kept} frozen tensors "
                        f"removed); groups (owner, kind, lr): {lrs}")
        return optimizer

    def optimizer_step(self) -> None:
        """Ultralytics' update, refused for a non-finite loss: the NaN never reaches the weights or the EMA."""
        check_train_loss(self)
        super().optimizer_step()  # type: ignore[misc]
        self.vp_updates += 1  # the memory meter measures the first step after the first update


def split_groups_by_owner(groups: list[dict[str, Any]], model: nn.Module, plan: TrainabilityPlan,
                          configs: list[Any], base_lr: float, wd_scale: float) -> list[dict[str, Any]]:
    """Ultralytics' parameter groups, frozen tensors dropped and each group split per strategy owner and setting.

    Every tensor's rate and decay follow :func:`visionpeft.optim_settings.resolve`, the rule classification uses:
    the recipe-wide values are Ultralytics' (``lr0``; ``weight_decay`` as Ultralytics scaled it for the batch), so a
    group's rate is its source group's rate times ``entry.lr / base_lr`` when the owning entry sets ``lr`` (so
    Ultralytics' own warmup boosts survive), times the LoRA+ ratio for ``lora_B``; biases, 1-D tensors (norm
    affines, SSF scale and shift) and ``no_weight_decay()`` tensors are not decayed, nor anything Ultralytics puts
    in its no-decay groups (``bn``, ``bias``); an entry's ``weight_decay`` is scaled like Ultralytics' own.
    Every new group keeps its source group's keys (``param_group`` decides Ultralytics' bias warmup) and carries
    ``owner``. Empty groups are dropped.

    Args:
        groups: ``optimizer.param_groups`` as Ultralytics built them.
        model: the unwrapped model those groups hold the parameters of.
        plan: its trainability plan; configs: the applied strategy configs.
        base_lr: the rate Ultralytics used (``args.lr0``, after ``optimizer=auto`` chose it).
        wd_scale: Ultralytics' ``batch * accumulate / nbs`` weight-decay factor.
    """
    from ...optim_settings import owner_settings, resolve

    settings = owner_settings(model, plan, configs)
    names = {id(p): n for n, p in model.named_parameters()}
    out: list[dict[str, Any]] = []
    for group in groups:
        split: dict[tuple[str, float, float], list[Any]] = {}
        decayed = group.get("param_group") in {"weight", "muon"}
        recipe_wd = group.get("weight_decay", 0.0) / wd_scale if decayed else 0.0
        for p in group["params"]:
            name = names.get(id(p))
            if not (p.requires_grad and name in settings):
                continue
            s = settings[name]
            rate, wd = resolve(s, lr=base_lr, weight_decay=recipe_wd, no_decay=not decayed)
            split.setdefault((s.owner, group["lr"] * rate / base_lr, wd * wd_scale), []).append(p)
        for (owner, lr, wd), params in split.items():
            out.append({**group, "params": params, "owner": owner, "lr": lr, "weight_decay": wd})
    return out
