"""Visual Prompt Tuning (Jia et al., ECCV 2022) for ViT-style transformers, without importing timm.

The prompts live in a small module added to the root model (``model.vpt``, parameter ``vpt.prompts`` of
shape ``(1 or prompted blocks, tokens, embed_dim)``), and three kinds of forward hooks splice them into the
token sequence that flows through the token blocks of the spec's ``tokens`` role (``spec.tokens``):

* a pre-hook on the first prompted block inserts the prompt tokens right after the prefix tokens
  (class/distillation/register tokens): ``[prefix, prompts, patches]``;
* in ``deep`` mode a pre-hook on every later prompted block overwrites the prompt slots with its own prompts;
* a hook on the last block removes the prompt slots, so the final norm, pooling (class token, average,
  attention pooling) and the head see exactly the sequence layout they were built for.

The hooks are small picklable callables that hold the prompt module; they survive ``copy.deepcopy`` and
``pickle`` (the copies point at the copied prompt module). They fire however the blocks are called
(``nn.Sequential``, a loop, timm's gradient checkpointing with its default non-reentrant mode).
Blocks that lie entirely in the frozen region (``freeze``) get no prompts: prompts start at the first block
outside it, and a frozen block in deep mode carries the previous block's prompt outputs.
Limitation: ``forward_intermediates`` of the blocks before the last returns sequences with prompt tokens.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator
from torch import Tensor, nn

from ..errors import ConfigError
from ..spec import TokenSpec
from .base import ApplyContext, ApplyReport, Strategy, StrategyConfig
from .budget import budget_limit, budget_summary, check_fraction, model_params
from .registry import register
from .roles import token_role

__all__ = ["VPTConfig", "VPTPrompts", "VPTStrategy", "remove", "vpt_init_bound"]

#: Name of the prompt module on the root model; the trainable tensor is ``f"{MODULE_NAME}.prompts"``.
MODULE_NAME = "vpt"


class VPTConfig(StrategyConfig):
    """Visual prompt tuning: learn a few extra input tokens; the transformer itself stays frozen.

    Args:
        tokens: prompt tokens per layer. 10 suits most tasks; the paper goes up to 50-100 for tasks far
            from the pretraining data, and 1-5 for tiny datasets. Each token costs ``embed_dim``
            parameters per layer and lengthens every attention sequence.
        mode: ``shallow`` inserts prompts once, before the first block (fewest parameters);
            ``deep`` gives every block its own prompts (``depth`` times the parameters), usually more
            accurate - the paper's best results are VPT-deep.
        dropout: dropout on the prompt tokens while training. Raise to 0.1 when a large prompt overfits
            a small dataset.
        init: ``xavier`` (the paper's uniform(-v, v), v = sqrt(6 / (3 * patch_size**2 + embed_dim)));
            ``zeros`` starts every prompt at zero (still not a no-op: attention attends to them).
        weight_decay: prompts are not decayed by default (they are input tokens, like ``pos_embed`` and the
            class token, which timm's ``no_weight_decay()`` exempts too); set a value to regularise them.
        budget: choose ``tokens`` so that the prompts are at most this fraction of the model's parameters
            (``0.001`` = 0.1%; counted as the plan counts ``trainable %``: prompts / (model + prompts), the
            ``head`` strategy not included): the most tokens that fit, at least 1. Mutually exclusive with
            ``tokens``. A token costs ``embed_dim`` (shallow) or ``embed_dim * prompted blocks`` (deep).
    """

    method: Literal["vpt"] = "vpt"
    tokens: int = Field(10, gt=0)
    mode: Literal["shallow", "deep"] = "shallow"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    init: Literal["xavier", "zeros"] = "xavier"
    weight_decay: float | None = Field(0.0, ge=0)
    budget: float | None = None

    @field_validator("budget")
    @classmethod
    def _fraction(cls, value: float | None) -> float | None:
        return check_fraction(value)

    @model_validator(mode="after")
    def _budget_excludes_tokens(self) -> VPTConfig:
        if self.budget is not None and "tokens" in self.model_fields_set:
            raise ValueError("budget and tokens are mutually exclusive: the budget chooses the number of tokens; "
                             "remove tokens or the budget")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A budget config dumps without ``tokens`` (so the dump parses again), a token config without ``budget``.
        out = handler(self)
        drop = "tokens" if self.budget is not None else "budget"
        return {k: v for k, v in out.items() if k != drop}

    def label(self) -> str:
        """``vpt shallow 10 tokens`` / ``vpt deep 50 tokens`` / ``vpt deep budget 0.1%``."""
        if self.budget is not None:
            return f"vpt {self.mode} budget {100 * self.budget:g}%"
        return f"vpt {self.mode} {self.tokens} token" + ("" if self.tokens == 1 else "s")


def vpt_init_bound(patch_size: int, embed_dim: int) -> float:
    """The VPT paper's uniform initialisation range (Xavier for a 3 x patch x patch -> embed_dim layer)."""
    return math.sqrt(6.0 / (3 * patch_size**2 + embed_dim))


class VPTPrompts(nn.Module):
    """Learned prompt tokens: ``prompts[layer]`` is the ``(tokens, embed_dim)`` prompt of one block.

    Args:
        layers: 1 (shallow) or the number of blocks (deep).
        tokens: prompt tokens per layer.
        embed_dim: token width.
        num_prefix_tokens: class/register tokens that precede the patch tokens; prompts go after them.
        dropout: prompt dropout while training.
    """

    def __init__(self, layers: int, tokens: int, embed_dim: int, num_prefix_tokens: int, dropout: float = 0.0):
        super().__init__()
        self.prompts = nn.Parameter(torch.zeros(layers, tokens, embed_dim))
        self.num_prefix_tokens = num_prefix_tokens
        self.dropout = dropout

    @property
    def tokens(self) -> int:
        return self.prompts.shape[1]

    def expanded(self, layer: int, like: Tensor) -> Tensor:
        """Layer ``layer``'s prompts as a ``(batch, tokens, dim)`` tensor matching ``like``'s dtype."""
        p = self.prompts[layer].to(like.dtype).unsqueeze(0).expand(like.shape[0], -1, -1)
        # Per-sample dropout, as in the paper (dropout after expanding over the batch).
        return F.dropout(p, self.dropout, self.training) if self.dropout > 0 else p

    def extra_repr(self) -> str:
        layers, tokens, dim = self.prompts.shape
        return f"layers={layers}, tokens={tokens}, embed_dim={dim}, prefix={self.num_prefix_tokens}"


def _tokens_of(args: tuple[Any, ...], where: str) -> Tensor:
    x = args[0] if args else None
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise RuntimeError(f"vpt: {where} expected a (batch, tokens, dim) tensor, got {type(x).__name__}")
    return x


class _InsertPrompts:
    """Forward pre-hook of the first block: ``[prefix, patches] -> [prefix, prompts, patches]``."""

    def __init__(self, prompts: VPTPrompts) -> None:
        self.prompts = prompts

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = _tokens_of(args, "first block")
        n = self.prompts.num_prefix_tokens
        x = torch.cat([x[:, :n], self.prompts.expanded(0, x), x[:, n:]], dim=1)
        return (x, *args[1:])


class _ReplacePrompts:
    """Forward pre-hook of a later block (deep mode): overwrite the prompt slots with this layer's prompts."""

    def __init__(self, prompts: VPTPrompts, layer: int) -> None:
        self.prompts = prompts
        self.layer = layer

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = _tokens_of(args, f"block {self.layer}")
        n, p = self.prompts.num_prefix_tokens, self.prompts.tokens
        x = torch.cat([x[:, :n], self.prompts.expanded(self.layer, x), x[:, n + p :]], dim=1)
        return (x, *args[1:])


class _StripPrompts:
    """Forward hook of the last block: drop the prompt slots so norm, pooling and head never see them."""

    def __init__(self, prompts: VPTPrompts) -> None:
        self.prompts = prompts

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        if not isinstance(output, Tensor):
            raise RuntimeError(f"vpt: the last block returned {type(output).__name__}, expected a tensor")
        n, p = self.prompts.num_prefix_tokens, self.prompts.tokens
        return torch.cat([output[:, :n], output[:, n + p :]], dim=1)


_HOOK_TYPES = (_InsertPrompts, _ReplacePrompts, _StripPrompts)


def _prompted_blocks(model: nn.Module, prompt: TokenSpec, ctx: ApplyContext) -> tuple[list[str], list[str]]:
    """The transformer blocks that get prompts: those not lying entirely in the frozen region.

    A frozen block receives no prompts of its own (the frozen region gets no adapters): shallow prompts are
    inserted before the first block outside the region, and in deep mode a frozen block carries the
    previous block's prompt outputs, as every later block does in shallow mode.
    """
    prompted, notes = [], []
    for name in prompt.blocks:
        cause = ctx.frozen.module_cause(model.get_submodule(name))
        if cause is None:
            prompted.append(name)
        else:
            notes.append(f"vpt: no prompts for {name}: it lies in the frozen region ({cause})")
    if not prompted:
        block = model.get_submodule(prompt.blocks[0])
        raise ConfigError(
            f"vpt: all {len(prompt.blocks)} transformer blocks lie in the frozen region "
            f"({ctx.frozen.describe(block.parameters())} in {prompt.blocks[0]}, ...), so no block gets prompts; "
            "freeze fewer blocks"
        )
    return prompted, notes


def _init_prompts(prompts: VPTPrompts, prompt: TokenSpec, init: str) -> None:
    with torch.no_grad():
        if init == "xavier":
            bound = vpt_init_bound(prompt.patch_size, prompt.embed_dim)
            prompts.prompts.uniform_(-bound, bound)
        else:
            prompts.prompts.zero_()


def _attach(model: nn.Module, prompted: list[str], last: str, prompts: VPTPrompts, deep: bool) -> None:
    """Insert before ``prompted[0]``, replace before each later prompted block (deep), strip after ``last``."""
    blocks = [model.get_submodule(b) for b in prompted]
    blocks[0].register_forward_pre_hook(_InsertPrompts(prompts))
    if deep:
        for layer, block in enumerate(blocks[1:], start=1):
            block.register_forward_pre_hook(_ReplacePrompts(prompts, layer))
    model.get_submodule(last).register_forward_hook(_StripPrompts(prompts))


def remove(model: nn.Module) -> bool:
    """Remove VPT from ``model``: its hooks and the ``vpt`` module. Returns whether anything was removed.

    Works on deep copies and unpickled models too (hooks are found by type, not by handle).
    """
    found = False
    for module in model.modules():
        for hooks, extras in (
            (module._forward_pre_hooks, (module._forward_pre_hooks_with_kwargs,)),
            (module._forward_hooks, (module._forward_hooks_with_kwargs, module._forward_hooks_always_called)),
        ):
            for key in [k for k, h in hooks.items() if isinstance(h, _HOOK_TYPES)]:
                del hooks[key]
                for extra in extras:
                    extra.pop(key, None)
                found = True
    if isinstance(getattr(model, MODULE_NAME, None), VPTPrompts):
        delattr(model, MODULE_NAME)
        found = True
    return found


def _budget_tokens(model: nn.Module, cfg: VPTConfig, ctx: ApplyContext, per_token: int, layers: int
                   ) -> dict[str, Any]:
    """The most tokens whose prompts stay within ``cfg.budget`` (``ctx.recorded`` when a saved adapter gives
    them), as a record for the plan.

    Raises:
        ConfigError: one token already exceeds the budget (naming the smallest fraction possible).
    """
    budget = float(cfg.budget)  # type: ignore[arg-type]
    base = model_params(model)
    recorded = (ctx.recorded or {}).get("tokens")
    tokens = int(recorded) if recorded is not None else budget_limit(budget, base) // per_token
    if tokens < 1:
        share = per_token / (base + per_token)
        raise ConfigError(
            f"vpt.budget: {budget:g} is below what one prompt token costs ({per_token:,} parameters = {share:.4g} of "
            f"the model, {cfg.mode} mode); raise the budget to at least {share:.4g}"
            + (" or use mode: shallow" if cfg.mode == "deep" else "")
        )
    used = tokens * per_token
    return {"budget": budget, "tokens": tokens, "layers": layers, "adapter_params": used, "model_params": base,
            "fraction": used / (base + used)}


@register
class VPTStrategy(Strategy):
    """Visual prompt tuning on a transformer the backend describes with a ``TokenSpec``."""

    method = "vpt"
    config_cls = VPTConfig
    mergeable = False  # visionpeft.merge refuses before touching the model

    def check(self, model: nn.Module, ctx: ApplyContext) -> None:
        prompt = token_role(ctx.spec)
        if prompt is None or not prompt.blocks:
            raise ConfigError(
                f"vpt needs a timm VisionTransformer (or subclass such as DeiT); model {ctx.spec.name!r} "
                f"({type(model).__name__}) is not. Use lora, bitfit or head for this model."
            )
        if hasattr(model, MODULE_NAME):
            raise ConfigError(
                f"vpt: the model already has an attribute {MODULE_NAME!r} (VPT applied twice?); "
                "list vpt once, or call visionpeft.strategies.vpt.remove(model) first"
            )
        missing = [b for b in prompt.blocks if b not in dict(model.named_modules())]
        if missing:
            raise ConfigError(f"vpt: the prompt blocks {missing[:3]} of {ctx.spec.name!r} are not in the model")

    def apply(self, model: nn.Module, ctx: ApplyContext) -> ApplyReport:
        cfg: VPTConfig = self.config  # type: ignore[assignment]
        self.check(model, ctx)
        prompt: TokenSpec = token_role(ctx.spec)  # type: ignore[assignment]
        prompted, notes = _prompted_blocks(model, prompt, ctx)
        deep = cfg.mode == "deep"
        layers = len(prompted) if deep else 1
        resolved = {} if cfg.budget is None else _budget_tokens(model, cfg, ctx, layers * prompt.embed_dim, layers)
        tokens = resolved.get("tokens", cfg.tokens)
        ref = next(model.parameters(), None)
        prompts = VPTPrompts(layers, tokens, prompt.embed_dim, prompt.num_prefix_tokens, cfg.dropout)
        if ref is not None:
            prompts.to(device=ref.device, dtype=ref.dtype)
        _init_prompts(prompts, prompt, cfg.init)
        prompts.train(model.training)
        model.add_module(MODULE_NAME, prompts)
        _attach(model, prompted, prompt.blocks[-1], prompts, deep)
        n_params = prompts.prompts.numel()
        notes.append(f"vpt-{cfg.mode}: {tokens} tokens x {prompts.prompts.shape[0]} layers = {n_params} params")
        if resolved:
            notes.append(f"vpt {budget_summary(resolved)}")
        return ApplyReport(trainable=[f"{MODULE_NAME}.prompts"], modules=[MODULE_NAME], notes=notes,
                           resolved=resolved)

    def merge(self, model: nn.Module) -> None:
        raise ConfigError(
            "vpt: prompts cannot be folded into the model's weights (they are extra input tokens). "
            "Keep the adapted model, or save the adapter with visionpeft.save_adapter and load it onto the "
            "base model with visionpeft.load_adapter."
        )

    def remove(self, model: nn.Module) -> bool:
        """Unload VPT (hooks + prompt module); see :func:`remove`."""
        return remove(model)
