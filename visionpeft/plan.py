"""The trainability plan: which parameters train, who owns them, how BatchNorm behaves, and the counts.

The plan is computed once when strategies are applied and then *enforced*: trainers call
:meth:`TrainabilityPlan.enforce` after anything that may have changed ``requires_grad`` (Ultralytics'
``_setup_train`` does) and :meth:`TrainabilityPlan.check` to fail loudly when something drifted.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .errors import PlanViolationError

BN_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm,)
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
#: Methods that tune only affine parameters over a frozen network: their BatchNorm layers follow the BN
#: policy instead of updating statistics (layers trained by full/freeze/head do update them).
AFFINE_ONLY_OWNERS = {"bitfit", "norm"}


def keep_bn_eval(module: nn.Module, args: object) -> None:
    """Forward pre-hook: a frozen BatchNorm always normalises with its running statistics.

    ``requires_grad=False`` does not stop running-statistics updates in train mode, and trainers call
    ``model.train()`` every epoch, so the mode is forced right before each forward instead.
    """
    module.training = False


def remove_bn_hooks(model: nn.Module) -> None:
    """Remove every :func:`keep_bn_eval` hook (used by merge/unload)."""
    for module in model.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if hook is keep_bn_eval:
                del module._forward_pre_hooks[key]


def _has_bn_hook(module: nn.Module) -> bool:
    return any(h is keep_bn_eval for h in module._forward_pre_hooks.values())


@dataclass
class TrainabilityPlan:
    """Who trains. Printable (``str(plan)``) and JSON-serialisable (``plan.to_dict()``).

    Attributes:
        trainable: trainable parameter name -> owning strategy (``lora``, ``head``, ``base``...).
        bn_modes: BatchNorm module name -> ``train`` (statistics update) or ``eval`` (fixed).
        total: number of parameter elements in the adapted model (adapters included).
        trainable_count: number of trainable parameter elements.
        by_strategy / by_module_type: trainable elements per owner / per owning module class.
        strategies: the methods applied, in order.
        labels: the same strategies with their settings (``freeze 10 blocks``, ``lora r8``), in order.
        resolved: per strategy entry, what its parameter budget resolved (per-layer ``ranks`` or VPT ``tokens``,
            ``adapter_params``, ``fraction``...; see :mod:`visionpeft.strategies.budget`); empty when no entry has
            a budget. Saved adapters load with these ranks.
    """

    trainable: dict[str, str]
    bn_modes: dict[str, str]
    total: int
    trainable_count: int
    by_strategy: dict[str, int]
    by_module_type: dict[str, int]
    strategies: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    resolved: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def build(
        cls, model: nn.Module, owners: dict[str, str], bn_policy: str, strategies: list[str],
        labels: list[str] | None = None,
    ) -> TrainabilityPlan:
        """Plan from the model's current ``requires_grad`` flags; ``owners`` attributes names to strategies."""
        modules = dict(model.named_modules())
        trainable: dict[str, str] = {}
        by_strategy: Counter[str] = Counter()
        by_type: Counter[str] = Counter()
        total = 0
        for name, p in model.named_parameters():
            total += p.numel()
            if p.requires_grad:
                owner = owners.get(name, "base")
                trainable[name] = owner
                by_strategy[owner] += p.numel()
                parent = name.rsplit(".", 1)[0] if "." in name else ""
                by_type[type(modules[parent]).__name__] += p.numel()
        bn_modes = {}
        for name, m in modules.items():
            if isinstance(m, BN_TYPES):
                # Statistics update where the layer trains as a whole (full fine-tuning, the unfrozen rest of
                # `freeze`, a re-initialised head). Layers whose affines a PEFT method tunes (bitfit, norm)
                # keep fixed statistics unless the policy says `train`: moving statistics under a frozen
                # conv shift every downstream feature (BitFit on digits: 0.56 top-1 vs 0.89 with eval).
                owners_here = {trainable.get(f"{name}.{p}") for p, _ in m.named_parameters(recurse=False)}
                trains = bool(owners_here - AFFINE_ONLY_OWNERS - {None})
                bn_modes[name] = "train" if trains or bn_policy == "train" else "eval"
        return cls(
            trainable=trainable,
            bn_modes=bn_modes,
            total=total,
            trainable_count=sum(by_strategy.values()),
            by_strategy=dict(by_strategy),
            by_module_type=dict(by_type),
            strategies=list(strategies),
            labels=list(labels if labels is not None else strategies),
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Plans pickled before budgets existed (Ultralytics checkpoints hold the adapted model) have no `resolved`.
        state.setdefault("resolved", [])
        self.__dict__.update(state)

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable_count / max(self.total, 1)

    def enforce(self, model: nn.Module) -> None:
        """Set ``requires_grad`` and BatchNorm behaviour on ``model`` as planned (idempotent)."""
        for name, p in model.named_parameters():
            p.requires_grad_(name in self.trainable)
        for name, m in model.named_modules():
            mode = self.bn_modes.get(name)
            if mode == "eval":
                if not _has_bn_hook(m):
                    m.register_forward_pre_hook(keep_bn_eval)
                m.training = False

    def check(self, model: nn.Module) -> None:
        """Raise :class:`PlanViolationError` if ``model`` no longer follows the plan."""
        names = dict(model.named_parameters())
        wrong_on = [n for n, p in names.items() if p.requires_grad and n not in self.trainable]
        wrong_off = [n for n in self.trainable if n not in names or not names[n].requires_grad]
        modules = dict(model.named_modules())
        bn_bad = [
            n for n, mode in self.bn_modes.items()
            if mode == "eval" and (n not in modules or not _has_bn_hook(modules[n]))
        ]
        if wrong_on or wrong_off or bn_bad:
            raise PlanViolationError(
                "the model no longer follows its trainability plan: "
                f"{len(wrong_on)} frozen tensors became trainable {wrong_on[:5]}, "
                f"{len(wrong_off)} planned tensors are frozen or missing {wrong_off[:5]}, "
                f"{len(bn_bad)} frozen BatchNorm layers lost their eval policy {bn_bad[:5]}. Something "
                "outside visionpeft changed requires_grad (a trainer's own freeze logic?): call "
                "plan.enforce(model) after it."
            )

    def bn_buffers(self) -> list[str]:
        """Buffer names whose values change during training (BatchNorm layers in ``train`` mode)."""
        return [f"{m}.{b}" for m, mode in self.bn_modes.items() if mode == "train" for b in BN_BUFFERS]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["trainable_pct"] = self.trainable_pct
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def describe(self, sep: str = " + ") -> str:
        """The strategies with their settings, e.g. ``freeze 10 blocks + lora r8 + head``."""
        return sep.join(self.labels or self.strategies)

    def summary(self) -> str:
        """A short human-readable account (also logged to TensorBoard as text)."""
        lines = [
            f"strategies: {self.describe(' -> ')}",
            f"trainable: {self.trainable_count:,} / {self.total:,} ({self.trainable_pct:.3f}%)",
            "by strategy: " + ", ".join(f"{k}={v:,}" for k, v in sorted(self.by_strategy.items())),
            "by module type: " + ", ".join(f"{k}={v:,}" for k, v in sorted(self.by_module_type.items())),
        ]
        if self.bn_modes:
            modes = Counter(self.bn_modes.values())
            lines.append("batchnorm: " + ", ".join(f"{k}={v}" for k, v in sorted(modes.items())))
        from .strategies.budget import budget_summary

        lines += [f"{method}: {budget_summary(r)}" for method, r in zip(self.strategies, self.resolved) if r]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


#: What checkpoints of adapted models pickle from this module (the checkpoint loader's allow-list reads it).
CHECKPOINT_CLASSES: tuple[Any, ...] = (TrainabilityPlan, keep_bn_eval)
