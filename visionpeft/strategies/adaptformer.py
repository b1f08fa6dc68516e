"""AdaptFormer (Chen et al., NeurIPS 2022): a parallel bottleneck adapter beside each transformer MLP.

For every MLP module of the model's blocks (:func:`~visionpeft.strategies.roles.mlp_modules`, derived from the
spec's roles: ``blocks.<i>.mlp`` in a timm ViT) the block
computes ``mlp(x) + s * up(dropout(relu(down(x))))`` on the MLP's own input ``x`` (after ``norm2``), with
``down: dim -> bottleneck`` and ``up: bottleneck -> dim``. As in the official code, ``down`` starts
Kaiming-uniform, ``up`` and both biases at zero, so a fresh adapter changes nothing; ``s`` is a fixed 0.1 or,
with ``learnable_scale``, a trained scalar.

The adapters live in one ``nn.ModuleDict`` on the root model, keyed by the MLP's name with dots as ``__``
(``adaptformer.blocks__0__mlp.down.weight``), and a forward hook on each MLP adds its adapter's output, so the
base model's parameter names stay as they were and ``nn.Sequential`` MLPs are not disturbed. It cannot be
folded into the weights (there is a ReLU between ``down`` and ``up``): :meth:`AdaptFormerStrategy.merge`
refuses, like VPT; save it with ``visionpeft.save_adapter`` and load it onto the base with
``visionpeft.load_adapter``. Hooks and modules survive ``copy.deepcopy`` and pickling, and :func:`remove`
unloads them.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, PositiveInt
from torch import Tensor, nn

from ..errors import ConfigError
from ..matching import match_modules
from . import roles
from .base import ApplyContext, ApplyReport, Strategy, StrategyConfig
from .registry import register
from .targets import filter_targets, nothing_left_message, start_block_roots

__all__ = [
    "AdaptFormerConfig", "AdaptFormerAdapter", "AdaptFormerStrategy", "adaptformer_param_count", "adapter_key",
    "remove",
]

#: Name of the ``nn.ModuleDict`` of adapters on the root model.
ATTR = "adaptformer"


def adapter_key(mlp_name: str) -> str:
    """Key of the adapter of MLP ``mlp_name`` in ``model.adaptformer`` (``blocks.0.mlp`` -> ``blocks__0__mlp``)."""
    return mlp_name.replace(".", "__")


class AdaptFormerConfig(StrategyConfig):
    """Parallel bottleneck adapters beside the MLP of each transformer block (not mergeable).

    Args:
        bottleneck: hidden width of each adapter. The paper uses 64 on ViT-B (768 wide); about ``dim / 12``
            is a good start. Raise it for tasks far from the pretraining data, lower it to save parameters.
        scale: factor on the adapter's output (paper: 0.1). Raise it (e.g. to 1.0) to let adapters learn
            faster; with ``learnable_scale`` it is the initial value of a trained scalar.
        learnable_scale: train the scale too (one extra parameter per adapter).
        dropout: dropout inside the adapter, after the ReLU (paper: 0.1 on small data; 0 here).
        targets: MLP modules to adapt (patterns as in :mod:`visionpeft.matching`); ``None`` uses the
            MLPs derived from the roles (every ``blocks.<i>.mlp`` of a timm ViT; ``spec.mlp_modules`` overrides).
        start_block: no adapters inside ``spec.blocks[:start_block]``.
    """

    method: Literal["adaptformer"] = "adaptformer"
    bottleneck: PositiveInt = 16
    scale: PositiveFloat = 0.1
    learnable_scale: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[str] | None = Field(None, min_length=1)
    start_block: int = Field(0, ge=0)


class AdaptFormerAdapter(nn.Module):
    """``scale * up(dropout(relu(down(x))))``.

    Args:
        dim_in, dim_out: the MLP's input and output widths (equal in a ViT).
        bottleneck: hidden width; scale, learnable_scale, dropout: see :class:`AdaptFormerConfig`.
    """

    def __init__(self, dim_in: int, dim_out: int, bottleneck: int, scale: float = 0.1,
                 learnable_scale: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.down = nn.Linear(dim_in, bottleneck)
        self.up = nn.Linear(bottleneck, dim_out)
        self.dropout = dropout
        if learnable_scale:
            self.scale: Tensor | float = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.scale = float(scale)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official init: ``down`` Kaiming-uniform, ``up`` and biases zero (a fresh adapter adds 0)."""
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.down(x.to(self.down.weight.dtype)))
        h = F.dropout(h, self.dropout, self.training) if self.dropout > 0 else h
        return self.up(h) * self.scale


def adaptformer_param_count(dim_in: int, dim_out: int, bottleneck: int, learnable_scale: bool = False) -> int:
    """``down`` (``dim_in * b + b``) + ``up`` (``b * dim_out + dim_out``) (+ 1 for a learnable scale)."""
    return dim_in * bottleneck + bottleneck + bottleneck * dim_out + dim_out + int(learnable_scale)


class _AddAdapter:
    """Forward hook of an MLP: ``output + adapter(input)``. A small picklable callable."""

    def __init__(self, adapter: AdaptFormerAdapter) -> None:
        self.adapter = adapter

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        return output + self.adapter(args[0]).to(output.dtype)


def _widths(name: str, mlp: nn.Module) -> tuple[int, int]:
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(
            f"adaptformer.targets: {name} ({type(mlp).__name__}) has no nn.Linear layers, so its width is unknown; "
            "target the MLP modules of transformer blocks (e.g. 'blocks.*.mlp')"
        )
    return linears[0].in_features, linears[-1].out_features


def remove(model: nn.Module) -> bool:
    """Remove every AdaptFormer adapter and hook from ``model``; returns whether anything was removed."""
    found = False
    for module in model.modules():
        for key in [k for k, h in module._forward_hooks.items() if isinstance(h, _AddAdapter)]:
            del module._forward_hooks[key]
            module._forward_hooks_with_kwargs.pop(key, None)
            module._forward_hooks_always_called.pop(key, None)
            found = True
    if isinstance(model._modules.get(ATTR), nn.ModuleDict):
        del model._modules[ATTR]
        found = True
    return found


@register
class AdaptFormerStrategy(Strategy):
    """Add an :class:`AdaptFormerAdapter` beside each selected MLP module."""

    method = "adaptformer"
    checkpoint_classes = (AdaptFormerAdapter, _AddAdapter)
    config_cls = AdaptFormerConfig
    config: AdaptFormerConfig
    mergeable = False  # visionpeft.merge refuses before touching the model

    def check(self, model: nn.Module, ctx: ApplyContext) -> None:
        """The MLPs resolve (the backend lists them, or every target pattern matches), each has Linear layers,
        the root can hold the adapters, ``start_block`` is in range."""
        self._targets(model, ctx)
        start_block_roots(self.config.start_block, ctx, "adaptformer")

    def _targets(self, model: nn.Module, ctx: ApplyContext) -> dict[str, nn.Module]:
        cfg = self.config
        defaults = roles.mlp_modules(model, ctx.spec) if cfg.targets is None else ()
        if cfg.targets is None and not defaults:
            raise ConfigError(
                f"adaptformer needs transformer blocks with an MLP; the roles of {ctx.spec.name!r} "
                f"({type(model).__name__}, {ctx.spec.backend} backend) give none. Name them in adaptformer.targets "
                "(e.g. ['blocks.*.mlp']), or use lora/ssf for this model."
            )
        patterns = list(cfg.targets) if cfg.targets is not None else list(defaults)
        found = match_modules(model, patterns, what="module", field="adaptformer.targets")
        if ATTR in model._modules or hasattr(model, ATTR) or isinstance(model, nn.Sequential | nn.ModuleList):
            raise ConfigError(
                f"adaptformer: the root model ({type(model).__name__}) cannot hold the adapters as "
                f"'{ATTR}' (applied twice, or a Sequential root); list adaptformer once, or wrap the model"
            )
        for name, mlp in found.items():
            _widths(name, mlp)
        return found

    def apply(self, model: nn.Module, ctx: ApplyContext) -> ApplyReport:
        cfg = self.config
        found = self._targets(model, ctx)
        notes: list[str] = []
        # A parallel adapter leaves the MLP's own parameters as they are: an MLP that trains in full keeps training.
        kept, skipped = filter_targets(model, found, ctx, notes, method="adaptformer", explicit=True, exclude=[],
                                       start_block=cfg.start_block, wraps=False)
        if not kept:
            raise ConfigError(nothing_left_message("adaptformer", found, skipped))
        report = ApplyReport(notes=notes)
        adapters = nn.ModuleDict()
        model.add_module(ATTR, adapters)
        for name, mlp in kept.items():
            dim_in, dim_out = _widths(name, mlp)
            ref = next(mlp.parameters())
            adapter = AdaptFormerAdapter(dim_in, dim_out, cfg.bottleneck, cfg.scale, cfg.learnable_scale, cfg.dropout)
            adapter.to(device=ref.device, dtype=ref.dtype if ref.dtype == torch.float64 else torch.float32)
            adapter.train(mlp.training)
            adapters[adapter_key(name)] = adapter
            mlp.register_forward_hook(_AddAdapter(adapter))
            report.modules.append(f"{ATTR}.{adapter_key(name)}")
            report.trainable += [f"{ATTR}.{adapter_key(name)}.{p}" for p, _ in adapter.named_parameters()]
        return report

    def merge(self, model: nn.Module) -> None:
        raise ConfigError(
            "adaptformer: the adapters cannot be folded into the model's weights (a ReLU sits between their two "
            "layers). Keep the adapted model, or save the adapter with visionpeft.save_adapter and load it onto "
            "the base model with visionpeft.load_adapter."
        )

    def remove(self, model: nn.Module) -> bool:
        """Unload AdaptFormer (hooks + adapter modules); see :func:`remove`."""
        return remove(model)
