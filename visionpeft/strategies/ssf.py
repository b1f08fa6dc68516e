"""SSF: scaling and shifting deep features (Lian et al., NeurIPS 2022), folded into the network on merge.

After each chosen operation a learned per-channel scale ``gamma`` and shift ``beta`` are applied:
``y = gamma * op(x) + beta``. Because the operations are linear in their weight and bias (Linear, Conv2d) or
end in a per-channel affine (BatchNorm, LayerNorm, GroupNorm), the pair folds exactly into the operation's
own parameters: ``W <- gamma * W`` (per output channel), ``b <- gamma * b + beta``; for a norm the affine
becomes ``(gamma * w, gamma * b + beta)``. The merged model is the original architecture with the original
parameter names.

Norm layers are adapted through their affine (the scale/shift act between the normalisation's affine and
anything the layer does after it): timm's ``BatchNormAct2d`` (BN + activation in one module) therefore gets
SSF before its activation, which is exactly what folds into its affine. Linear/Conv2d layers need a bias to
fold the shift into; bias-free ones are skipped (target the norm that follows them instead).

The parameters are ``ssf_scale`` and ``ssf_shift`` on an :class:`SSFLayer` that wraps the layer
(``blocks.0.norm1.ssf_scale``). ``init: identity`` (default) starts at ``gamma = 1, beta = 0``, so a fresh
model computes exactly what the base did; ``init: paper`` draws ``gamma ~ N(1, 0.02)``, ``beta ~ N(0, 0.02)``
as the official code.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import ConfigError
from ..matching import name_matches, type_matches
from . import roles
from .adapter_layer import PlainLayerView, adapter_dtype, delta_dtype
from .base import ApplyContext, ApplyReport, Strategy, StrategyConfig
from .registry import register
from .simple import _is_norm
from .targets import (
    check_targets,
    filter_targets,
    nothing_left_message,
    plain_linear_or_conv,
    resolve_targets,
    unwrap_layers,
    wrap_module,
)

__all__ = ["SSFConfig", "SSFLayer", "SSFStrategy", "ssf_param_count", "ssf_supported"]


class SSFConfig(StrategyConfig):
    """Scale-and-shift features: two vectors per adapted layer, folded into the network by ``merge``.

    Args:
        targets: layers followed by a scale and shift (patterns as in :mod:`visionpeft.matching`: names,
            globs, class names such as ``"LayerNorm"``, ``"BatchNorm2d"``, ``"Linear"``). ``None`` uses the
            placement derived from the model's roles (:func:`~visionpeft.strategies.roles.ssf_targets`): a ViT's
            qkv/proj/fc1/fc2 and LayerNorms (the paper's placement), a CNN's or YOLO's BatchNorms (one per
            conv). Narrow it (e.g. only norms) to halve the parameters.
        exclude: patterns never adapted, added to the default exclusions
            (:func:`~visionpeft.strategies.roles.adapter_exclude`: stem, head convs).
        start_block: no SSF inside ``spec.blocks[:start_block]``; early layers then stay exactly pretrained
            and need no backward pass.
        init: ``identity`` (scale 1, shift 0: the adapted model starts as the base) or ``paper`` (the official
            code's ``N(1, 0.02)`` / ``N(0, 0.02)``). Keep ``identity`` unless you reproduce the paper.
    """

    method: Literal["ssf"] = "ssf"
    targets: list[str] | None = Field(None, min_length=1)
    exclude: list[str] = Field(default_factory=list)
    start_block: int = Field(0, ge=0)
    init: Literal["identity", "paper"] = "identity"


def _has_affine(module: nn.Module) -> bool:
    w, b = getattr(module, "weight", None), getattr(module, "bias", None)
    return isinstance(w, nn.Parameter) and isinstance(b, nn.Parameter) and w.shape == b.shape


def ssf_supported(module: nn.Module) -> bool:
    """Plain Linear/Conv2d with a bias, or a normalisation layer with a weight and bias of the same shape."""
    if isinstance(module, SSFLayer):
        return False
    if isinstance(module, nn.Linear | nn.Conv2d):
        return plain_linear_or_conv(module) and module.bias is not None
    return _is_norm(module) and _has_affine(module)


def _channels(module: nn.Module) -> tuple[int, ...]:
    if isinstance(module, nn.Linear):
        return (module.out_features,)
    if isinstance(module, nn.Conv2d):
        return (module.out_channels,)
    return tuple(module.weight.shape)  # type: ignore[union-attr]


def ssf_param_count(module: nn.Module) -> int:
    """``2 * channels``: one scale and one shift per output channel (per affine entry for norms)."""
    n = 1
    for d in _channels(module):
        n *= d
    return 2 * n


class SSFLayer(PlainLayerView, nn.Module):
    """``gamma * op(x) + beta`` around a Linear, Conv2d or normalisation layer; :meth:`merge` folds it in.

    Reads like the plain layer (:class:`~visionpeft.strategies.adapter_layer.PlainLayerView`): ``weight`` and
    ``bias`` are the folded ``gamma * w`` and ``gamma * b + beta``, a norm's running statistics and ``eps`` are
    the base's, so Ultralytics' Conv+BN ``fuse()`` folds an SSF-wrapped BatchNorm exactly.

    Args:
        base: the layer; kept as ``base_layer`` with frozen parameters.
        init: ``identity`` or ``paper`` (see :class:`SSFConfig`).

    Shapes: ``ssf_scale`` and ``ssf_shift`` are ``(out_features,)`` / ``(out_channels,)``, or the norm's
    affine shape.
    """

    adapter_kind = "SSF"
    is_visionpeft_wrapper = True

    def __init__(self, base: nn.Module, init: str = "identity") -> None:
        super().__init__()
        if not ssf_supported(base):
            raise TypeError(
                f"SSF adapts plain Linear/Conv2d layers with a bias and norm layers with an affine, not "
                f"{type(base).__name__}"
            )
        self.base_layer = base
        self.is_norm = not isinstance(base, nn.Linear | nn.Conv2d)
        self.merged = False
        self._base_requires_grad = {n: p.requires_grad for n, p in base.named_parameters()}
        for p in base.parameters():
            p.requires_grad_(False)
        w = base.weight  # type: ignore[union-attr]
        kw = {"device": w.device, "dtype": adapter_dtype(w.dtype)}
        self.ssf_scale = nn.Parameter(torch.ones(_channels(base), **kw))
        self.ssf_shift = nn.Parameter(torch.zeros(_channels(base), **kw))
        if init == "paper":
            with torch.no_grad():
                nn.init.normal_(self.ssf_scale, mean=1.0, std=0.02)
                nn.init.normal_(self.ssf_shift, std=0.02)

    def _per_channel(self, v: Tensor, like: Tensor) -> Tensor:
        return v.view(-1, 1, 1) if isinstance(self.base_layer, nn.Conv2d) and like.dim() == 4 else v

    def _folded(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The base's weight and bias with the scale and shift folded in, in ``dtype``."""
        w, b = self.base_layer.weight.to(dtype), self.base_layer.bias.to(dtype)  # type: ignore[union-attr]
        s, t = self.ssf_scale.to(dtype), self.ssf_shift.to(dtype)
        return s.view(-1, *([1] * (w.dim() - 1))) * w if not self.is_norm else s * w, s * b + t

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.base_layer(x)
        if self.is_norm:
            # The norm runs with the folded affine: exactly gamma * norm(x) + beta, also for norm+act modules.
            w, b = self._folded(self.ssf_scale.dtype)
            dt = self.base_layer.weight.dtype  # type: ignore[union-attr]
            return functional_call(self.base_layer, {"weight": w.to(dt), "bias": b.to(dt)}, (x,))
        out = self.base_layer(x)
        s, t = self.ssf_scale.to(out.dtype), self.ssf_shift.to(out.dtype)
        return out * self._per_channel(s, out) + self._per_channel(t, out)

    def effective_weight(self) -> Tensor:
        w = self.base_layer.weight  # type: ignore[union-attr]
        return self._folded(delta_dtype(w.dtype))[0].to(w.dtype)

    def effective_bias(self) -> Tensor:
        w = self.base_layer.weight  # type: ignore[union-attr]
        return self._folded(delta_dtype(w.dtype))[1].to(w.dtype)

    def _fold_before_assign(self, name: str) -> None:
        # Scale and shift act on both tensors: fold them in first, so the tensor not assigned stays effective.
        self.merge()
        self.__dict__.pop("_unmerged", None)
        self.folded = True

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the scale and shift into the base's weight and bias (no-op if already merged)."""
        if self.merged:
            return
        self._unmerged = (self.base_layer.weight.detach().clone(), self.base_layer.bias.detach().clone())  # type: ignore[union-attr]
        w = self.base_layer.weight  # type: ignore[union-attr]
        fw, fb = self._folded(delta_dtype(w.dtype))
        w.copy_(fw.to(w.dtype))
        self.base_layer.bias.copy_(fb.to(w.dtype))  # type: ignore[union-attr]
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base's own weight and bias (kept aside by :meth:`merge`).

        Raises:
            RuntimeError: the weight or bias was replaced (Conv+BN fusion folded SSF into it for good).
        """
        if not self.merged:
            return
        if self.folded:
            raise RuntimeError("SSFLayer: the scale and shift were folded into a replaced weight or bias (e.g. by "
                               "Ultralytics' Conv+BN fuse()); they cannot be taken out again")
        w0, b0 = self._unmerged
        self.base_layer.weight.copy_(w0)  # type: ignore[union-attr]
        self.base_layer.bias.copy_(b0)  # type: ignore[union-attr]
        del self._unmerged
        self.merged = False

    def to_base(self) -> nn.Module:
        """The original layer with the scale and shift folded in; the wrapper is dropped."""
        self.merge()
        self.__dict__.pop("_unmerged", None)
        for name, p in self.base_layer.named_parameters():
            p.requires_grad_(self._base_requires_grad.get(name, p.requires_grad))
        return self.base_layer

    def adapter_parameter_names(self) -> list[str]:
        return ["ssf_scale", "ssf_shift"]

    def extra_repr(self) -> str:
        return f"channels={tuple(self.ssf_scale.shape)}, merged={self.merged}"


_KINDS = "Linear/Conv2d (with bias) or normalisation (with affine)"


@register
class SSFStrategy(Strategy):
    """Wrap the selected layers with :class:`SSFLayer`."""

    method = "ssf"
    checkpoint_classes = (SSFLayer,)
    config_cls = SSFConfig
    config: SSFConfig

    def check(self, model: nn.Module, ctx: ApplyContext) -> None:
        """Targets resolve to foldable layers, every exclude pattern matches, ``start_block`` is in range."""
        check_targets(model, self.config, ctx, supported=ssf_supported, kinds=_KINDS)  # type: ignore[arg-type]

    def apply(self, model: nn.Module, ctx: ApplyContext) -> ApplyReport:
        cfg = self.config
        patterns = list(cfg.targets) if cfg.targets is not None else list(roles.ssf_targets(model, ctx.spec))
        candidates, notes = resolve_targets(
            model, patterns, strict=cfg.targets is not None, method="ssf", supported=ssf_supported, kinds=_KINDS
        )
        _note_unsupported_norms(model, patterns, notes)
        kept, skipped = filter_targets(
            model, candidates, ctx, notes, method="ssf", explicit=cfg.targets is not None, exclude=cfg.exclude,
            start_block=cfg.start_block,
        )
        if not kept:
            raise ConfigError(nothing_left_message("ssf", candidates, skipped))
        report = ApplyReport(notes=notes)
        for name, module in kept.items():
            wrap_module(model, name, module, SSFLayer(module, cfg.init), report, ("ssf_scale", "ssf_shift"))
        return report

    def merge(self, model: nn.Module) -> None:
        unwrap_layers(model, SSFLayer)


def _note_unsupported_norms(model: nn.Module, patterns: list[str], notes: list[str]) -> None:
    """Notes for matched layers SSF cannot fold into: norms without an affine, Linear/Conv2d without a bias."""
    for name, m in model.named_modules():
        if not name or not any(name_matches(name, p) or type_matches(m, p) for p in patterns):
            continue
        if _is_norm(m) and not _has_affine(m):
            notes.append(f"skipped {name}: {type(m).__name__} without an affine has nothing to fold SSF into")
        elif isinstance(m, nn.Linear | nn.Conv2d) and m.bias is None:
            notes.append(f"skipped {name}: {type(m).__name__} without a bias cannot take the shift; target the "
                         "norm layer after it")
