"""Public entry points: apply strategies, merge them away, and report parameters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from .errors import ConfigError, VisionPeftError
from .foreign import refuse_foreign
from .plan import TrainabilityPlan, remove_bn_hooks
from .snapshot import atomic
from .spec import ModelSpec

# The adapted state is defined below this module (the checkpoint loader needs it too); these are its public names.
from .state import STATE_ATTR, AdaptedState, get_plan, get_state

__all__ = ["STATE_ATTR", "AdaptedState", "get_state", "get_plan", "parse_strategies", "apply", "merge"]
from .strategies.base import ApplyContext, Strategy, StrategyConfig
from .strategies.importance import GradientProbe
from .strategies.registry import build, parse_config
from .wrappers import refuse_ddp, unwrap

StrategyEntry = Mapping[str, Any] | StrategyConfig


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
    model: Any, strategies: Sequence[StrategyEntry], spec: ModelSpec | None = None, *,
    probe: GradientProbe | None = None, resolved: Sequence[Mapping[str, Any]] | None = None,
) -> TrainabilityPlan:
    """Apply strategies in place and return the enforced trainability plan. All or nothing.

    If any listed method adds trainables (every method but ``full`` and ``freeze``) the base
    starts frozen and only what the strategies claim trains; with ``freeze`` alone the rest trains
    (Ultralytics' ``freeze=N``). ``freeze`` entries run first and build the one frozen region (with
    ``spec.always_frozen``): no strategy trains or adds adapters inside it, wherever ``freeze`` is listed.

    Every entry is validated against the model before anything changes, and a failure at any later step
    restores the model exactly (modules, hooks, ``requires_grad``, added attributes).

    Args:
        probe: training batches for budgets with ``allocation: importance`` (classification training passes
            them; see :class:`visionpeft.strategies.importance.GradientProbe`).
        resolved: per entry, what a budget resolved before (``plan.resolved`` of a saved adapter or run): the
            strategies take those per-layer ranks / tokens instead of solving the budget again.

    Raises:
        ConfigError / TargetNotFoundError: a bad entry (naming ``strategies.<i>`` or the field), a model that
            is already adapted (by visionpeft, or by HF PEFT: :mod:`visionpeft.foreign`), or a plan in which
            nothing would train (naming what froze it).
    """
    refuse_ddp(model, "apply")
    root = unwrap(model)
    if get_state(root) is not None:
        raise ConfigError(
            "this model is already adapted; build a fresh model, or call visionpeft.merge(model) first"
        )
    refuse_foreign(root, "apply")
    configs = parse_strategies(strategies)
    if spec is None:
        from .backends import spec_for

        spec = spec_for(root)
    objs = _ordered(build(configs))
    ctx = ApplyContext(spec=spec, probe=probe)
    records = _records(resolved, len(configs))
    _freeze_always(root, ctx)
    for i, strategy in objs:
        _at(i, strategy.check, root, ctx)
    attach = _ultralytics_attach(root)
    with atomic(root):
        plan = _apply_all(root, objs, ctx, configs, records)
        plan.enforce(root)
        setattr(root, STATE_ATTR, AdaptedState(configs=configs, spec=spec, plan=plan))
    if attach is not None:
        attach()
    return plan


def _ultralytics_attach(root: nn.Module) -> Any:
    """For the network of an Ultralytics YOLO object (``YOLO(...)`` or its ``.model``): what makes the object's
    ``train()`` train the adapted model instead of a plain one (``tasks/ultralytics/attached.py``); else ``None``."""
    if not any(c.__module__.startswith("ultralytics.") for c in type(root).__mro__):
        return None
    from .engines import ULTRALYTICS_ATTACH, load_attr

    return load_attr(ULTRALYTICS_ATTACH, "the YOLO training hook")(root)


def _ordered(objs: list[Strategy]) -> list[tuple[int, Strategy]]:
    """``freeze`` entries first (they define the region every other strategy reads), the rest in order."""
    indexed = list(enumerate(objs))
    return [e for e in indexed if e[1].method == "freeze"] + [e for e in indexed if e[1].method != "freeze"]


def _at(index: int, fn: Any, *args: Any) -> Any:
    """Call ``fn``; a ``VisionPeftError`` it raises names the entry (``strategies.<i>``) it came from."""
    try:
        return fn(*args)
    except VisionPeftError as exc:
        text = str(exc)
        if text.startswith("strategies."):
            raise
        raise type(exc)(f"strategies.{index}: {text}") from None


def _records(resolved: Sequence[Mapping[str, Any]] | None, n: int) -> list[dict[str, Any]]:
    """``resolved`` as one dict per strategy entry (empty when nothing was recorded)."""
    if resolved is None or len(resolved) == 0:
        return [{} for _ in range(n)]
    if len(resolved) != n or not all(isinstance(r, Mapping) for r in resolved):
        raise ConfigError(f"resolved: expected one mapping per strategy entry ({n}), got {str(resolved)[:120]}")
    return [dict(r) for r in resolved]


def _apply_all(
    root: nn.Module, objs: list[tuple[int, Strategy]], ctx: ApplyContext, configs: list[StrategyConfig],
    records: list[dict[str, Any]],
) -> TrainabilityPlan:
    base = list(root.parameters()) if not any(s.adds_trainables for _, s in objs) else []
    for p in root.parameters():
        p.requires_grad_(False)
    resolved: list[dict[str, Any]] = [{} for _ in configs]
    for i, strategy in objs:
        ctx.recorded = records[i] or None
        report = _at(i, strategy.apply, root, ctx)
        resolved[i] = report.resolved
        params = dict(root.named_parameters())
        ctx.claims.add((params[n] for n in report.trainable), strategy.method)
    # What freeze leaves trainable belongs to freeze's "rest trains" rule. Claims are re-asserted: a later
    # strategy (LoRA freezing the layer it wraps) must not silently take one away; the region always wins.
    ctx.claims.add(base, "freeze")
    for p in ctx.claims.params():
        p.requires_grad_(p not in ctx.frozen)
    owners = {n: ctx.claims.owner(p) or "base" for n, p in root.named_parameters() if p.requires_grad}
    methods = [c.method for c in configs]
    plan = TrainabilityPlan.build(root, owners, ctx.bn_policy, methods, [c.label() for c in configs])
    plan.resolved = resolved if any(resolved) else []
    if plan.trainable_count == 0:
        raise ConfigError(_nothing_trains_message(root, ctx, methods))
    return plan


def _freeze_always(root: nn.Module, ctx: ApplyContext) -> None:
    """Put the backend's ``spec.always_frozen`` parameters (Ultralytics' ``.dfl``) into the region."""
    from .matching import name_matches
    from .strategies.freeze import always_frozen_cause

    for pat in ctx.spec.always_frozen:
        hits = [p for n, p in root.named_parameters() if name_matches(n, pat, prefix=True) or pat in n]
        ctx.frozen.add(hits, always_frozen_cause(pat))


def _nothing_trains_message(root: nn.Module, ctx: ApplyContext, methods: list[str]) -> str:
    params = list(root.parameters())
    if not params:
        return f"strategies {methods}: the model has no parameters, so nothing can train"
    return (
        f"strategies {methods}: nothing would train: all {len(params)} parameter tensors are frozen "
        f"({ctx.frozen.describe(params)}). Freeze less (e.g. a smaller freeze.n; Ultralytics stops the same "
        "way for freeze=N past the model) or add a strategy that trains (head, lora, bitfit, ...)."
    )


def merge(model: Any) -> Any:
    """Fold every strategy into plain weights and remove all visionpeft state; returns ``model``.

    After merging, the network is the original architecture (state-dict keys as before adaptation) and
    loads into a fresh model with ``strict=True``. Raises ``ConfigError`` for methods that cannot be
    folded (VPT prompts), before touching the model; any other failure restores the adapted model.
    """
    refuse_ddp(model, "merge")
    root = unwrap(model)
    state = get_state(root)
    if state is None:
        raise ConfigError("merge: this model has no visionpeft strategies applied")
    objs = build(state.configs)
    # Refuse before touching anything if a strategy cannot be merged (it raises its own clear error).
    for s in objs:
        if not getattr(type(s), "mergeable", True):
            s.merge(root)
    with atomic(root, adapter_weights=True):
        for s in reversed(objs):
            s.merge(root)
        remove_bn_hooks(root)
        delattr(root, STATE_ATTR)
        for p in root.parameters():
            p.requires_grad_(True)
    return model
