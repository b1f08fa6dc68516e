"""Public entry points: apply strategies, merge them away, and report parameters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from .errors import ConfigError
from .plan import BN_TYPES, TrainabilityPlan, remove_bn_hooks
from .spec import ModelSpec
from .strategies.base import ApplyContext, Strategy, StrategyConfig
from .strategies.registry import build, parse_config

STATE_ATTR = "_visionpeft_state"
StrategyEntry = Mapping[str, Any] | StrategyConfig


@dataclass
class AdaptedState:
    """What visionpeft attaches to an adapted model (survives ``copy.deepcopy`` and pickling)."""

    configs: list[StrategyConfig]
    spec: ModelSpec
    plan: TrainabilityPlan


def unwrap(model: Any) -> nn.Module:
    """The ``nn.Module`` to adapt: an Ultralytics ``YOLO`` object's ``.model``, else the model itself."""
    if isinstance(model, nn.Module):
        inner = getattr(model, "model", None)
        # ultralytics.YOLO is an nn.Module whose .model is the real network (DetectionModel).
        if type(model).__name__ in {"YOLO", "Model"} and isinstance(inner, nn.Module):
            return inner
        return model
    raise TypeError(f"expected a torch nn.Module (or an Ultralytics YOLO object), got {type(model).__name__}")


def get_state(model: Any) -> AdaptedState | None:
    """The adapted state of ``model``, or ``None`` for a plain model."""
    return getattr(unwrap(model), STATE_ATTR, None)


def get_plan(model: Any) -> TrainabilityPlan | None:
    """The trainability plan of an adapted model, or ``None``."""
    state = get_state(model)
    return state.plan if state else None


def parse_strategies(strategies: Sequence[StrategyEntry]) -> list[StrategyConfig]:
    """Validate strategy entries (mappings with ``method`` or config objects) into typed configs."""
    if isinstance(strategies, Mapping | StrategyConfig):
        strategies = [strategies]
    configs = [parse_config(e, where=f"strategies.{i}") for i, e in enumerate(strategies)]
    if not configs:
        raise ConfigError(
            "strategies: the list is empty; use [{method: full}] for full fine-tuning or e.g. "
            "[{method: lora, rank: 8}, {method: head}]"
        )
    return configs


def apply(
    model: Any, strategies: Sequence[StrategyEntry], spec: ModelSpec | None = None
) -> TrainabilityPlan:
    """Apply strategies in order, in place, and return the enforced trainability plan.

    If any listed method adds trainables (every method but ``full`` and ``freeze``) the base
    starts frozen and only what the strategies claim trains; with ``freeze`` alone the rest trains
    (Ultralytics' ``freeze=N``). ``freeze`` regions receive no adapters.
    """
    root = unwrap(model)
    if get_state(root) is not None:
        raise ConfigError(
            "this model is already adapted; build a fresh model, or call visionpeft.merge(model) first"
        )
    configs = parse_strategies(strategies)
    if spec is None:
        from .backends import spec_for

        spec = spec_for(root)
    objs = build(configs)
    base_trainable = not any(s.adds_trainables for s in objs)
    for p in root.parameters():
        p.requires_grad_(base_trainable)
    ctx = ApplyContext(spec=spec)
    owners = _apply_all(root, objs, ctx)
    _freeze_always(root, spec, ctx, owners)
    plan = TrainabilityPlan.build(root, owners, ctx.bn_policy, [c.method for c in configs])
    plan.enforce(root)
    setattr(root, STATE_ATTR, AdaptedState(configs=configs, spec=spec, plan=plan))
    return plan


def _apply_all(root: nn.Module, objs: list[Strategy], ctx: ApplyContext) -> dict[str, str]:
    owners: dict[str, str] = {}
    for strategy in objs:
        report = strategy.apply(root, ctx)
        params = dict(root.named_parameters())
        for name in report.trainable:
            params[name].requires_grad_(True)
            owners.setdefault(name, strategy.method)  # the first strategy that claims a tensor owns it
    if any(s.method == "freeze" for s in objs):
        # What freeze leaves trainable belongs to freeze's "rest trains" rule.
        owners = {**{n: "freeze" for n, p in root.named_parameters() if p.requires_grad}, **owners}
    return owners


def _freeze_always(root: nn.Module, spec: ModelSpec, ctx: ApplyContext, owners: dict[str, str]) -> None:
    from .matching import name_matches

    for name, p in root.named_parameters():
        if any(name_matches(name, pat, prefix=True) or pat in name for pat in spec.always_frozen):
            p.requires_grad_(False)
    if ctx.bn_policy == "frozen":
        for m in root.modules():
            if isinstance(m, BN_TYPES):
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)
    for name, p in root.named_parameters():
        if not p.requires_grad:
            owners.pop(name, None)


def merge(model: Any) -> Any:
    """Fold every strategy into plain weights and remove all visionpeft state; returns ``model``.

    After merging, the network is the original architecture (state-dict keys as before adaptation) and
    loads into a fresh model with ``strict=True``. Raises ``ConfigError`` for methods that cannot be
    folded (VPT prompts).
    """
    root = unwrap(model)
    state = get_state(root)
    if state is None:
        raise ConfigError("merge: this model has no visionpeft strategies applied")
    objs = build(state.configs)
    # Refuse before touching anything if a strategy cannot be merged (it raises its own clear error).
    for s in objs:
        if not getattr(type(s), "mergeable", True):
            s.merge(root)
    for s in reversed(objs):
        s.merge(root)
    remove_bn_hooks(root)
    delattr(root, STATE_ATTR)
    for p in root.parameters():
        p.requires_grad_(True)
    return model
