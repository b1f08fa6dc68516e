"""Backbone freezing: ``freeze=N`` as Ultralytics users know it, name patterns, and a BatchNorm policy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from torch import nn

from ..errors import ConfigError
from ..matching import match_parameters
from ..plan import BN_TYPES
from .base import ApplyContext, ApplyReport, Strategy, StrategyConfig
from .registry import register


class FreezeConfig(StrategyConfig):
    """Freeze parts of the model.

    Args:
        n: an int ``N`` freezes the first N entries of the backend's ordered block list (for an Ultralytics
            model ``model.model[0:N]``, exactly Ultralytics' ``freeze=N``); a list ``[0, 3, 5]`` freezes those
            blocks. Raise it to save compute and keep more pretrained features; lower it when the target
            domain is far from the pretraining data.
        patterns: extra parameter-name patterns to freeze (globs, ``re:`` regexes, dotted prefixes).
        unfreeze: patterns that stay trainable even inside a frozen region (e.g. ``"re:.*\\.bn\\..*"``).
        bn: BatchNorm policy for frozen parts. ``eval`` (default) keeps running statistics fixed, also after
            ``model.train()``; ``train`` lets them adapt to the new data (cheap domain adaptation, needs
            batches of 16+); ``frozen`` puts every BatchNorm in the model in eval mode with frozen affine
            parameters, trainable parts included (for batches too small for batch statistics).
    """

    method: Literal["freeze"] = "freeze"
    n: int | list[int] | None = None
    patterns: list[str] = Field(default_factory=list)
    unfreeze: list[str] = Field(default_factory=list)
    bn: Literal["eval", "train", "frozen"] = "eval"

    @field_validator("n")
    @classmethod
    def _non_negative(cls, v: int | list[int] | None) -> int | list[int] | None:
        values = v if isinstance(v, list) else [] if v is None else [v]
        if any(i < 0 for i in values):
            raise ValueError("block indices must be >= 0")
        return v

    def label(self) -> str:
        """``freeze 10 blocks``, ``freeze blocks 0,3,5``, ``freeze 2 patterns`` (+ `` bn=train`` if not eval)."""
        parts = ["freeze"]
        if isinstance(self.n, int):
            parts.append(f"{self.n} block" + ("" if self.n == 1 else "s"))
        elif self.n is not None:
            parts.append("blocks " + ",".join(str(i) for i in self.n))
        if self.patterns:
            parts.append(f"{len(self.patterns)} pattern" + ("" if len(self.patterns) == 1 else "s"))
        if self.bn != "eval":
            parts.append(f"bn={self.bn}")
        return " ".join(parts)


@register
class FreezeStrategy(Strategy):
    """Freeze blocks / parameters; the rest keeps training unless an adapter strategy is also listed.

    Every form (``n``, ``patterns``, ``bn: frozen``) puts its parameters into the one frozen region
    (:class:`~visionpeft.strategies.region.FrozenRegion`) with the field that froze them; ``unfreeze`` takes
    parameters out of it again. :func:`visionpeft.apply` runs ``freeze`` entries before the others, so the
    region is complete before any strategy reads it, wherever ``freeze`` stands in the list.
    """

    method = "freeze"
    config_cls = FreezeConfig
    adds_trainables = False

    def check(self, model: nn.Module, ctx: ApplyContext) -> None:
        self._selection(model, ctx)

    def apply(self, model: nn.Module, ctx: ApplyContext) -> ApplyReport:
        cfg: FreezeConfig = self.config  # type: ignore[assignment]
        groups, keep, blocks = self._selection(model, ctx)
        frozen = 0
        for cause, params in groups:
            frozen += ctx.frozen.add(params, cause)
        ctx.frozen.release(keep.values())
        for p in ctx.frozen.params():
            p.requires_grad_(False)
        ctx.bn_policy = cfg.bn
        return ApplyReport(
            trainable=sorted(keep), notes=[f"froze {frozen} tensors in {len(blocks)} blocks"]
        )

    def _selection(
        self, model: nn.Module, ctx: ApplyContext
    ) -> tuple[list[tuple[str, list[nn.Parameter]]], dict[str, nn.Parameter], list[str]]:
        """``([(cause, parameters)], {unfrozen name: parameter}, frozen block names)``; changes nothing."""
        cfg: FreezeConfig = self.config  # type: ignore[assignment]
        if cfg.n is None and not cfg.patterns and cfg.bn != "frozen":
            raise ConfigError(
                "freeze: give 'n' (number or list of block indices), 'patterns', and/or bn: frozen"
            )
        # A block may own more than its own module (a ViT stem also owns cls_token/pos_embed).
        members = ctx.spec.extra.get("block_members", {})
        blocks = [m for b in self._selected_blocks(cfg, ctx) for m in members.get(b, (b,))]
        params = dict(model.named_parameters())
        groups: list[tuple[str, list[nn.Parameter]]] = []
        if blocks:
            groups.append((f"freeze.n={cfg.n}", [p for n, p in params.items() if _under(n, blocks)]))
        for pattern in cfg.patterns:
            names = match_parameters(model, [pattern], what="parameter", field="freeze.patterns")
            groups.append((f"freeze.patterns {pattern!r}", [params[n] for n in names]))
        if cfg.bn == "frozen":
            bn = [p for m in model.modules() if isinstance(m, BN_TYPES) for p in m.parameters(recurse=False)]
            groups.append(("freeze.bn='frozen'", bn))
        keep: dict[str, nn.Parameter] = {}
        for pattern in cfg.unfreeze:
            names = match_parameters(model, [pattern], what="parameter", field="freeze.unfreeze")
            hits = {n: params[n] for n in names if ctx.frozen.cause(params[n]) not in _always(ctx)}
            if not hits:
                raise ConfigError(
                    f"freeze.unfreeze: pattern {pattern!r} matches only parameters the {ctx.spec.backend} backend "
                    f"never trains (spec.always_frozen {list(ctx.spec.always_frozen)}: {names[:3]}); drop it"
                )
            keep.update(hits)
        return groups, keep, blocks

    @staticmethod
    def _selected_blocks(cfg: FreezeConfig, ctx: ApplyContext) -> list[str]:
        if cfg.n is None:
            return []
        blocks = list(ctx.spec.blocks)
        if not blocks:
            raise ConfigError(
                f"freeze.n: the {ctx.spec.backend} backend gives no ordered block list for model "
                f"{ctx.spec.name!r}; use 'patterns' instead"
            )
        indices = list(range(cfg.n)) if isinstance(cfg.n, int) else cfg.n
        bad = [i for i in indices if i >= len(blocks)]
        if bad:
            what = f"n={cfg.n} asks for more blocks" if isinstance(cfg.n, int) else f"index {bad[0]} is"
            raise ConfigError(
                f"freeze.n: {what} past the end: the model has {len(blocks)} blocks "
                f"(0..{len(blocks) - 1}: {blocks[0]} ... {blocks[-1]}). Use n <= {len(blocks)}."
            )
        return [blocks[i] for i in indices]


def _under(name: str, roots: list[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def always_frozen_cause(pattern: str) -> str:
    """The cause recorded for parameters the backend never trains (``spec.always_frozen``)."""
    return f"spec.always_frozen {pattern!r}"


def _always(ctx: ApplyContext) -> set[str]:
    return {always_frozen_cause(p) for p in ctx.spec.always_frozen}
