"""Shared parts of the LyCORIS methods (LoHa, LoKr): a config base, a layer whose update is a full weight
``delta`` built from small factors, and the strategy that wraps target layers.

Both methods follow HF PEFT's implementations (``peft.tuners.loha`` / ``peft.tuners.lokr``, themselves from
KohakuBlueleaf's LyCORIS): the forward pass is ``base(x) + op(x, delta)`` where ``op`` is the base's own
linear map or convolution (same stride, padding, padding mode, dilation, groups) applied with the update as
weight, so merging ``delta`` into the base weight is exact for any geometry.
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from typing import ClassVar

import torch.nn.functional as F
from pydantic import Field, PositiveFloat, PositiveInt
from torch import Tensor, nn

from .adapter_layer import WeightAdapterLayer, conv_like
from .base import ApplyContext, ApplyReport, Strategy
from .budget import RankBudgetConfig, budget_ranks, budget_summary
from .roles import adapter_targets
from .targets import (
    Target,
    check_targets,
    default_settings,
    resolve_targets,
    select_targets,
    unwrap_layers,
    wrap_module,
)

__all__ = ["LycorisConfig", "DeltaWeightLayer", "LycorisStrategy"]

_SHARED_ARGS = """
        rank: size of the factors. Raise it when the adapted model underfits, lower it to save parameters.
        alpha: strength; the update is scaled by ``alpha / rank``. ``None`` means ``alpha = rank`` (scale 1).
            Raise it to make the adapters learn faster without touching the optimizer.
        targets: modules to adapt (patterns as in :mod:`visionpeft.matching`); ``None`` uses the backend's
            defaults (the same layers as LoRA: :func:`~visionpeft.strategies.roles.adapter_targets`). Narrow it
            to spend fewer parameters.
        exclude: patterns never adapted, added to the default exclusions
            (:func:`~visionpeft.strategies.roles.adapter_exclude`); with default ``targets``
            the task head is excluded too.
        default_exclude: apply the backend's default exclusions (stem conv, task head: ``spec.lora_exclude``)
            to the targets. ``False`` adapts exactly what ``targets`` names (an HF PEFT adapter loaded with
            :func:`visionpeft.load_adapter` may adapt a stem or head layer; it sets this).
        rank_pattern / alpha_pattern: per-layer overrides ``{pattern: value}``; the first matching pattern wins.
        max_param_fraction: skip a layer whose adapter would have more parameters than this fraction of its
            weight (depthwise convs); ``None`` adapts every target.
        start_block: no adapters inside ``spec.blocks[:start_block]`` (early blocks stay exactly pretrained).
"""


class LycorisConfig(RankBudgetConfig):
    """Fields shared by ``loha`` and ``lokr`` (documented on each; the budget fields only on ``loha``)."""

    rank: PositiveInt = 8
    alpha: PositiveFloat | None = None
    targets: list[str] | None = Field(None, min_length=1)
    exclude: list[str] = Field(default_factory=list)
    default_exclude: bool = True
    rank_pattern: dict[str, PositiveInt] = Field(default_factory=dict)
    alpha_pattern: dict[str, PositiveFloat] = Field(default_factory=dict)
    max_param_fraction: PositiveFloat | None = 1.0
    start_block: int = Field(0, ge=0)

    def label(self) -> str:
        """The method name, with the budget when set (``loha budget 1%``)."""
        return self.method if self.budget is None else f"{self.method} {self.budget_label()}"


class DeltaWeightLayer(WeightAdapterLayer):
    """A Linear/Conv2d plus ``op(x, scale * delta)``; subclasses build ``delta`` (unscaled) from their factors.

    Attributes:
        rank, alpha, scale: factor size, strength and ``alpha / rank``.
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float) -> None:
        if rank <= 0:
            raise ValueError(f"{self.adapter_kind} rank must be a positive integer, got {rank}")
        if alpha <= 0:
            raise ValueError(f"{self.adapter_kind} alpha must be > 0, got {alpha}")
        if not isinstance(base, nn.Linear | nn.Conv2d):
            raise TypeError(f"{self.adapter_kind} supports nn.Linear and nn.Conv2d, not {type(base).__name__}")
        super().__init__(base)
        self.rank = rank
        self.alpha = float(alpha)
        self.scale = alpha / rank

    @abstractmethod
    def _raw_delta(self, dtype: object) -> Tensor:
        """The unscaled update in ``dtype``, any shape with the base weight's number of elements."""

    def _delta(self, dtype: object) -> Tensor:
        return (self._raw_delta(dtype) * self.scale).reshape(self.base_weight.shape)

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        dt = next(p.dtype for n, p in self.named_parameters() if not n.startswith("base_layer."))
        xa, delta = x.to(dt), self._delta(dt)
        if isinstance(self.base_layer, nn.Linear):
            extra = F.linear(xa, delta)
        else:
            extra = conv_like(self.base_layer, xa, delta)  # type: ignore[arg-type]
        return out + extra.to(out.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, scale={self.scale:g}, merged={self.merged}"


def flat_shape(base: nn.Module) -> tuple[int, int]:
    """The base weight as a matrix: ``(out, in)`` for Linear, ``(out, in / groups * kh * kw)`` for Conv2d."""
    w = base.weight  # type: ignore[union-attr]
    return int(w.shape[0]), int(w[0].numel())


class LycorisStrategy(Strategy):
    """Wrap the selected Linear/Conv2d modules with the method's :class:`DeltaWeightLayer`."""

    layer_cls: ClassVar[type[DeltaWeightLayer]]

    def check(self, model: nn.Module, ctx: ApplyContext) -> None:
        """Targets resolve, every rank/alpha/exclude pattern matches, ``start_block`` is in range."""
        check_targets(model, self.config, ctx)  # type: ignore[arg-type]

    def apply(self, model: nn.Module, ctx: ApplyContext) -> ApplyReport:
        cfg: LycorisConfig = self.config  # type: ignore[assignment]
        patterns = list(cfg.targets) if cfg.targets is not None else list(adapter_targets(model, ctx.spec))
        candidates, notes = resolve_targets(model, patterns, strict=cfg.targets is not None, method=cfg.method)
        # With a budget, layers are selected at rank 1 (max_param_fraction too) and the budget sets the ranks.
        settings = None if cfg.budget is None else functools.partial(default_settings, rank=1)
        targets = select_targets(model, candidates, cfg, ctx, notes, cost=self.cost,  # type: ignore[arg-type]
                                 settings=settings)
        report = ApplyReport(notes=notes)
        if cfg.budget is not None:
            result = budget_ranks(model, targets, cfg, ctx, cost=self.cost, max_rank=self.max_rank,
                                  settings=lambda t, r: default_settings(t.name, t.module, cfg, r))  # type: ignore[arg-type]
            targets, report.resolved = result.targets, result.record
            notes.append(f"{cfg.method} {budget_summary(result.record)}")
        for t in targets:
            layer = self.make_layer(t)
            wrap_module(model, t.name, t.module, layer, report, layer.adapter_parameter_names())
        return report

    @abstractmethod
    def cost(self, t: Target) -> int:
        """Parameters the adapter of ``t`` adds (compared with ``max_param_fraction``; the budget's cost)."""

    def max_rank(self, t: Target) -> int:
        """The largest rank a budget gives ``t``: the full rank ``min(out, in / groups * kh * kw)`` of its
        weight viewed as a matrix."""
        return min(flat_shape(t.module))

    @abstractmethod
    def make_layer(self, t: Target) -> DeltaWeightLayer:
        """The wrapper of one target layer."""

    def merge(self, model: nn.Module) -> None:
        unwrap_layers(model, self.layer_cls)

