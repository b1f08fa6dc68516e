"""The ``lora`` strategy: wrap selected ``nn.Linear`` / ``nn.Conv2d`` modules with low-rank adapters."""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt
from torch import nn

from ..base import ApplyContext, ApplyReport, Strategy
from ..budget import RankBudgetConfig, budget_ranks, budget_summary
from ..registry import register
from ..roles import adapter_targets
from ..targets import (
    LayerTargetConfig,
    Target,
    check_targets,
    default_settings,
    resolve_targets,
    select_targets,
    unwrap_layers,
    wrap_module,
    wrapped_layers,
)
from .layers import LoRAConv2d, LoRALayer, LoRALinear, adapter_param_count

__all__ = ["LoRAConfig", "LoRAStrategy", "lora_layers", "merge_in_place", "unmerge", "merge_lora", "lora_max_rank"]


class LoRAConfig(RankBudgetConfig):
    """Low-rank adapters on Linear and Conv2d layers (Hu et al., 2021), mergeable into plain weights.

    Args:
        rank: width of each update. 4-16 covers most uses; raise it when the adapted model underfits a task
            far from pretraining, lower it when adapter size matters.
        alpha: strength; the update is scaled by ``alpha / rank``. ``None`` means ``alpha = rank`` (scale 1),
            which keeps the learning rate meaningful when you change the rank. Raise it to make adapters
            learn faster without changing the optimizer.
        dropout: dropout on the LoRA input only. Use 0.05-0.1 on small data sets that overfit.
        targets: which modules to adapt (patterns as in :mod:`visionpeft.matching`: class names such as
            ``"Linear"``/``"Conv2d"``, dotted suffixes such as ``"qkv"``, globs, ``"re:<regex>"``). ``None``
            uses the defaults derived from the model's roles (:func:`~visionpeft.strategies.roles.adapter_targets`:
            a ViT's token-block Linear layers, a CNN's convs; a backend's ``spec.lora_targets`` overrides them).
            Narrow it (e.g. ``["qkv", "proj"]``) to spend fewer parameters.
        exclude: patterns never adapted, added to the default exclusions
            (:func:`~visionpeft.strategies.roles.adapter_exclude`: head, stem conv); with default ``targets``
            the task head is excluded too (the ``head`` strategy trains it in full), explicit ``targets`` may
            reach into it. A module inside an excluded module is excluded.
        default_exclude: apply the backend's default exclusions (stem conv, task head: ``spec.lora_exclude``)
            to the targets. ``False`` adapts exactly what ``targets`` names (an HF PEFT adapter loaded with
            :func:`visionpeft.load_adapter` may adapt a stem or head layer; it sets this).
        rank_pattern: per-layer rank overrides, ``{pattern: rank}``; the first matching pattern wins. Use it
            to give late blocks more capacity than early ones.
        alpha_pattern: per-layer alpha overrides, ``{pattern: alpha}``; the first matching pattern wins.
        use_rslora: scale by ``alpha / sqrt(rank)`` (rsLoRA). Turn on for ranks of 32 and more, where
            ``alpha / rank`` makes the update learn too slowly.
        qkv: ``"all"`` adapts a fused ``qkv`` projection as one matrix; ``"qv"`` adapts only its q and v
            thirds (the original LoRA paper's choice) for Linear layers named ``*qkv`` with ``out = 3 * in``.
        max_param_fraction: skip a layer whose adapter would have more parameters than this fraction of the
            layer's weight (depthwise convs, where conv LoRA costs ``rank * (k*k + 1)`` per channel against
            ``k*k`` for the layer). ``None`` adapts every target regardless of cost.
        start_block: no adapters inside ``spec.blocks[:start_block]`` ("LoRA + partial freeze"): early blocks
            compute generic features and a frozen prefix needs no backward pass. Combine with ``freeze``
            for the same effect with BatchNorm handling.
        loraplus_lr_ratio: LoRA+ (Hayou et al., 2024): ``lora_B`` learns at ``ratio`` times this strategy's
            learning rate (``lora_A`` at the rate itself). The paper recommends about 16; it speeds up
            learning of wide layers. ``None`` (default) gives A and B the same rate.
        budget, allocation, importance_batches: choose per-layer ranks so that the adapter trains at most
            ``budget`` of the model's parameters (the ``head`` strategy not counted); see
            :class:`~visionpeft.strategies.budget.RankBudgetConfig` and :mod:`visionpeft.strategies.budget`.
            Mutually exclusive with ``rank`` and ``rank_pattern``.
    """

    method: Literal["lora"] = "lora"
    rank: PositiveInt = 8
    alpha: PositiveFloat | None = None
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[str] | None = Field(None, min_length=1)
    exclude: list[str] = Field(default_factory=list)
    default_exclude: bool = True
    rank_pattern: dict[str, PositiveInt] = Field(default_factory=dict)
    alpha_pattern: dict[str, PositiveFloat] = Field(default_factory=dict)
    use_rslora: bool = False
    qkv: Literal["all", "qv"] = "all"
    max_param_fraction: PositiveFloat | None = 1.0
    start_block: int = Field(0, ge=0)
    loraplus_lr_ratio: PositiveFloat | None = None

    def label(self) -> str:
        """``lora r8`` (``lora budget 1%`` with a budget), plus the alpha when it is not the rank, ``qv`` and a
        ``start_block`` when set."""
        parts = [f"lora r{self.rank}" if self.budget is None else f"{self.method} {self.budget_label()}"]
        if self.alpha is not None and self.alpha != self.rank:
            parts.append(f"a{self.alpha:g}")
        if self.use_rslora:
            parts.append("rs")
        if self.qkv == "qv":
            parts.append("qv")
        if self.start_block:
            parts.append(f"from block {self.start_block}")
        return " ".join(parts)


@register
class LoRAStrategy(Strategy):
    """Wrap the selected Linear/Conv2d modules with :class:`LoRALinear` / :class:`LoRAConv2d`.

    Subclasses (DoRA) change the layer classes through :meth:`make_layer`; target resolution, skip rules and
    merging are shared (:mod:`visionpeft.strategies.targets`).
    """

    method = "lora"
    checkpoint_classes = (LoRALinear, LoRAConv2d)
    config_cls = LoRAConfig
    config: LoRAConfig
    #: Layer class whose instances :meth:`merge` folds away.
    layer_cls: type[LoRALayer] = LoRALayer

    def check(self, model: nn.Module, ctx: ApplyContext) -> None:
        """Targets resolve, every rank/alpha/exclude pattern matches, ``start_block`` is in range."""
        check_targets(model, self.config, ctx)

    def apply(self, model: nn.Module, ctx: ApplyContext) -> ApplyReport:
        cfg = self.config
        patterns = list(cfg.targets) if cfg.targets is not None else list(adapter_targets(model, ctx.spec))
        candidates, notes = resolve_targets(model, patterns, strict=cfg.targets is not None, method=cfg.method)
        # With a budget, layers are selected at rank 1 (max_param_fraction too) and the budget sets the ranks.
        settings = _settings if cfg.budget is None else functools.partial(_settings, rank=1)
        targets = select_targets(model, candidates, cfg, ctx, notes, cost=self.cost, settings=settings)
        report = ApplyReport(notes=notes)
        if cfg.budget is not None:
            result = budget_ranks(model, targets, cfg, ctx, cost=self.cost, max_rank=self.max_rank,
                                  settings=lambda t, r: _settings(t.name, t.module, cfg, rank=r))
            targets, report.resolved = result.targets, result.record
            notes.append(f"{cfg.method} {budget_summary(result.record)}")
        for t in targets:
            layer = self.make_layer(t)
            wrap_module(model, t.name, t.module, layer, report, layer.adapter_parameter_names())
        if cfg.qkv == "qv" and not any(t.segments for t in targets):
            notes.append("qkv='qv': no fused '*qkv' Linear with out = 3 * in among the targets; nothing split")
        return report

    def cost(self, t: Target) -> int:
        """Parameters the adapter of ``t`` adds (compared with ``max_param_fraction``; the budget's cost)."""
        return adapter_param_count(t.module, t.rank, t.segments)

    def max_rank(self, t: Target) -> int:
        """The largest rank that still adds expressiveness on ``t`` (see :func:`lora_max_rank`)."""
        return lora_max_rank(t.module, t.segments)

    def make_layer(self, t: Target) -> LoRALayer:
        """The wrapper of one target layer."""
        cfg = self.config
        if isinstance(t.module, nn.Linear):
            return LoRALinear(t.module, t.rank, t.alpha, cfg.dropout, cfg.use_rslora, t.segments)
        return LoRAConv2d(t.module, t.rank, t.alpha, cfg.dropout, cfg.use_rslora)  # type: ignore[arg-type]

    def merge(self, model: nn.Module) -> None:
        unwrap_layers(model, self.layer_cls)


def lora_max_rank(module: nn.Module, segments: tuple[tuple[int, int], ...] | None = None) -> int:
    """Full rank of a LoRA update: ``min(out, in)`` (Linear; per segment with ``segments``), and per group
    ``min(out / groups, in / groups * kh * kw)`` (Conv2d: LoRA's rank is per group)."""
    if isinstance(module, nn.Linear):
        rows = module.out_features if segments is None else min(b - a for a, b in segments)
        return min(rows, module.in_features)
    if isinstance(module, nn.Conv2d):
        g, (kh, kw) = module.groups, module.kernel_size
        return min(module.out_channels // g, module.in_channels // g * kh * kw)
    raise TypeError(f"LoRA supports nn.Linear and nn.Conv2d, not {type(module).__name__}")


def _settings(name: str, module: nn.Module, cfg: LayerTargetConfig, rank: int | None = None) -> Target:
    """Rank/alpha from the patterns (``rank``: a budget's choice), plus q/v segments of a fused ``*qkv``
    Linear when ``qkv='qv'``."""
    t = default_settings(name, module, cfg, rank)
    if (
        getattr(cfg, "qkv", "all") == "qv"
        and isinstance(module, nn.Linear)
        and name.rpartition(".")[2] == "qkv"
        and module.out_features == 3 * module.in_features
    ):
        d = module.in_features
        return replace(t, segments=((0, d), (2 * d, 3 * d)))
    return t


# ---------------------------------------------------------------- merging



def lora_layers(model: nn.Module) -> dict[str, LoRALayer]:
    """Every LoRA layer of ``model`` (DoRA layers included) by qualified name."""
    return wrapped_layers(model, LoRALayer)  # type: ignore[return-value]


def merge_in_place(model: nn.Module) -> int:
    """Fold every adapter into its base weight but keep the adapters (undo with :func:`unmerge`)."""
    layers = lora_layers(model)
    for layer in layers.values():
        layer.merge()
    return len(layers)


def unmerge(model: nn.Module) -> int:
    """Take every merged adapter out of its base weight again."""
    layers = lora_layers(model)
    for layer in layers.values():
        layer.unmerge()
    return len(layers)


def merge_lora(model: nn.Module) -> int:
    """Replace every LoRA layer by its base layer with the update merged: the original architecture and
    parameter names (``blocks.0.attn.qkv.weight``). Returns how many layers were merged."""
    return unwrap_layers(model, LoRALayer)
