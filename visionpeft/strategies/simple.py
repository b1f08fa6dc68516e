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
    """Claim ``names`` minus the frozen region; raise naming the freeze causes when nothing is left."""
    params = dict(model.named_parameters())
    picked = [n for n in names if params[n] not in ctx.frozen]
    if not picked:
        raise TargetNotFoundError(
            f"{what}: nothing to train: all {len(names)} candidate tensors lie in the frozen region "
            f"({ctx.frozen.describe(params[n] for n in names)}); freeze less or drop {what!r}"
        )
    notes = []
    if len(picked) < len(names):
        notes.append(
            f"{what}: left {len(names) - len(picked)} tensors frozen "
            f"({ctx.frozen.describe(params[n] for n in names)})"
        )
    for n in picked:
        params[n].requires_grad_(True)
    return ApplyReport(trainable=picked, notes=notes)


def _set_bn_policy(cfg: StrategyConfig, ctx: ApplyContext) -> None:
    bn = getattr(cfg, "bn", None)
    if bn is None:
        return
    if ctx.bn_policy == "frozen":
        raise ConfigError(
            f"{cfg.method}.bn: {bn!r} contradicts freeze.bn='frozen' (every BatchNorm layer frozen, in eval mode); "
            f"drop one of them"
        )
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

    def check(self, model: nn.Module, ctx: ApplyContext) -> None:
        self._head_modules(model, ctx)

    def apply(self, model: nn.Module, ctx: ApplyContext) -> ApplyReport:
        found = self._head_modules(model, ctx)
        names = [f"{m}.{p}" for m, mod in found.items() for p, _ in mod.named_parameters()]
        return _train_params(model, list(dict.fromkeys(names)), ctx, "head")

    def _head_modules(self, model: nn.Module, ctx: ApplyContext) -> dict[str, nn.Module]:
        cfg: HeadConfig = self.config  # type: ignore[assignment]
        heads = list(cfg.modules) or list(ctx.spec.head)
        if not heads:
            raise ConfigError(
                f"head: the {ctx.spec.backend} backend does not know the head of {ctx.spec.name!r}; "
                "list it: {method: head, modules: ['fc']}"
            )
        field = "head.modules" if cfg.modules else f"head (the {ctx.spec.backend} backend's spec.head)"
        return match_modules(model, heads, what="module", field=field)


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

    def check(self, model: nn.Module, ctx: ApplyContext) -> None:
        _biases(model)

    def apply(self, model: nn.Module, ctx: ApplyContext) -> ApplyReport:
        _set_bn_policy(self.config, ctx)
        return _train_params(model, _biases(model), ctx, "bitfit")


class NormConfig(StrategyConfig):
    __doc__ = "Train only the affine parameters of normalisation layers (BatchNorm, LayerNorm, ...).\n" + _BN_DOC

    method: Literal["norm"] = "norm"
    bn: Literal["eval", "train"] | None = None


@register
class NormStrategy(Strategy):
    method = "norm"
    config_cls = NormConfig

    def check(self, model: nn.Module, ctx: ApplyContext) -> None:
        _norm_affines(model)

    def apply(self, model: nn.Module, ctx: ApplyContext) -> ApplyReport:
        _set_bn_policy(self.config, ctx)
        return _train_params(model, _norm_affines(model), ctx, "norm")


def _biases(model: nn.Module) -> list[str]:
    names = [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"]
    if not names:
        raise TargetNotFoundError("bitfit: the model has no bias parameters")
    return names


def _norm_affines(model: nn.Module) -> list[str]:
    names = [
        f"{mn}.{pn}" if mn else pn
        for mn, mod in model.named_modules()
        if _is_norm(mod)
        for pn, _ in mod.named_parameters(recurse=False)
    ]
    if not names:
        raise TargetNotFoundError("norm: the model has no normalisation layer with affine parameters")
    return names
