"""Cheap baselines: full fine-tuning, head only, BitFit (biases) and norm (normalisation affines)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from ..errors import ConfigError, TargetNotFoundError
from ..matching import match_modules
from .base import ApplyContext, ApplyReport, Strategy, StrategyConfig
from .registry import register

# Normalisation layers whose affine parameters the ``norm`` strategy trains.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES += (nn.RMSNorm,)


def _is_norm(module: nn.Module) -> bool:
    # timm and Ultralytics subclass the torch norms (LayerNorm2d, BatchNormAct2d), or name theirs *Norm*.
    return isinstance(module, _NORM_TYPES) or type(module).__name__.endswith(("Norm", "Norm2d", "NormAct2d"))


def _train_params(
    model: nn.Module, names: list[str], ctx: ApplyContext, what: str
) -> ApplyReport:
    params = dict(model.named_parameters())
    picked = [n for n in names if n not in ctx.frozen_params]
    if not picked:
        raise TargetNotFoundError(
            f"{what}: nothing to train: every candidate lies in a frozen region ({len(names)} candidates)"
        )
    for n in picked:
        params[n].requires_grad_(True)
    return ApplyReport(trainable=picked)


def _set_bn_policy(cfg: StrategyConfig, ctx: ApplyContext) -> None:
    bn = getattr(cfg, "bn", None)
    if bn is not None:
        ctx.bn_policy = bn


class FullConfig(StrategyConfig):
    """Full fine-tuning: every parameter trains. The baseline every compare run includes."""

    method: Literal["full"] = "full"


@register
class FullStrategy(Strategy):
    method = "full"
    config_cls = FullConfig
    adds_trainables = False

    def apply(self, model: nn.Module, ctx: ApplyContext) -> ApplyReport:
        names = [n for n, _ in model.named_parameters()]
        return _train_params(model, names, ctx, "full")


class HeadConfig(StrategyConfig):
    """Train the task head (the backend re-initialises it to the dataset's classes).

    Args:
        modules: override the backend's head modules (names or patterns); leave empty normally.
    """

    method: Literal["head"] = "head"
    modules: list[str] = Field(default_factory=list)


@register
class HeadStrategy(Strategy):
    method = "head"
    config_cls = HeadConfig

    def apply(self, model: nn.Module, ctx: ApplyContext) -> ApplyReport:
        cfg: HeadConfig = self.config  # type: ignore[assignment]
        heads = list(cfg.modules) or list(ctx.spec.head)
        if not heads:
            raise ConfigError(
                f"head: the {ctx.spec.backend} backend does not know the head of {ctx.spec.name!r}; "
                "list it: {method: head, modules: ['fc']}"
            )
        found = match_modules(model, heads, what="module", field="head.modules")
        names = [
            f"{m}.{p}" for m, mod in found.items() for p, _ in mod.named_parameters()
        ]
        names = list(dict.fromkeys(names))
        frozen = [n for n in names if n in ctx.frozen_params]
        if frozen:
            raise ConfigError(
                f"head: the head parameters {frozen[:3]} lie in a frozen region; lower freeze.n or drop 'head'"
            )
        return _train_params(model, names, ctx, "head")


_BN_DOC = """
    Args:
        bn: running statistics of the BatchNorm layers this method tunes. ``None`` keeps the policy of a
            ``freeze`` strategy (default ``eval``: statistics fixed, usually best with a frozen backbone);
            ``train`` lets them follow the new data (try it under a strong domain shift with batches of 16+).
"""


class BitFitConfig(StrategyConfig):
    __doc__ = "BitFit: train only bias terms (Ben Zaken et al., 2022). Tiny and strong on ViTs.\n" + _BN_DOC

    method: Literal["bitfit"] = "bitfit"
    bn: Literal["eval", "train"] | None = None


@register
class BitFitStrategy(Strategy):
    method = "bitfit"
    config_cls = BitFitConfig

    def apply(self, model: nn.Module, ctx: ApplyContext) -> ApplyReport:
        names = [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"]
        if not names:
            raise TargetNotFoundError("bitfit: the model has no bias parameters")
        _set_bn_policy(self.config, ctx)
        return _train_params(model, names, ctx, "bitfit")


class NormConfig(StrategyConfig):
    __doc__ = "Train only the affine parameters of normalisation layers (BatchNorm, LayerNorm, ...).\n" + _BN_DOC

    method: Literal["norm"] = "norm"
    bn: Literal["eval", "train"] | None = None


@register
class NormStrategy(Strategy):
    method = "norm"
    config_cls = NormConfig

    def apply(self, model: nn.Module, ctx: ApplyContext) -> ApplyReport:
        names = [
            f"{mn}.{pn}" if mn else pn
            for mn, mod in model.named_modules()
            if _is_norm(mod)
            for pn, _ in mod.named_parameters(recurse=False)
        ]
        if not names:
            raise TargetNotFoundError("norm: the model has no normalisation layer with affine parameters")
        _set_bn_policy(self.config, ctx)
        return _train_params(model, names, ctx, "norm")
