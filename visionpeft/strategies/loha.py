"""LoHa: low-rank Hadamard-product updates (Hyeon-Woo et al., FedPara, ICLR 2022; LyCORIS), as in HF PEFT.

The update of a weight viewed as an ``out x in'`` matrix (``in' = in / groups * kh * kw`` for convs) is

    delta = scale * (W1a @ W1b) * (W2a @ W2b)        (* elementwise, scale = alpha / rank)

with ``W1a, W2a: out x rank`` and ``W1b, W2b: rank x in'``. The Hadamard product of two rank-``r`` matrices can
reach rank ``r**2``, so LoHa expresses richer updates than LoRA with ``2 * rank * (out + in')`` parameters
(twice LoRA's at the same rank). Init as PEFT: ``W2b = 0`` (a fresh adapter changes nothing), the other three
Kaiming-uniform. Convolutions use PEFT's default flattened form (not the CP/"effective conv" variant).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .lycoris import _SHARED_ARGS, DeltaWeightLayer, LycorisConfig, LycorisStrategy, flat_shape
from .registry import register
from .targets import Target

__all__ = ["LoHaConfig", "LoHaLayer", "LoHaStrategy", "loha_param_count"]


class LoHaConfig(LycorisConfig):
    __doc__ = (
        "LoHa (Hadamard product of two low-rank updates) on Linear and Conv2d layers, mergeable.\n\n"
        "    Prefer it over LoRA when a low rank underfits but parameters are scarce: rank 4 LoHa can express\n"
        "    rank-16 updates. Parameters per layer: ``2 * rank * (out + in / groups * kh * kw)``.\n\n    Args:"
        + _SHARED_ARGS
        + """        budget, allocation, importance_batches: choose per-layer ranks so that the adapter trains at
            most ``budget`` of the model's parameters (the ``head`` strategy not counted); mutually exclusive
            with ``rank`` and ``rank_pattern``. See :class:`~visionpeft.strategies.budget.RankBudgetConfig`.
"""
    )

    method: Literal["loha"] = "loha"


def loha_param_count(base: nn.Module, rank: int) -> int:
    """``2 * rank * (out + in')`` with ``in' = in / groups * kh * kw`` for convs."""
    out, inn = flat_shape(base)
    return 2 * rank * (out + inn)


class LoHaLayer(DeltaWeightLayer):
    """LoHa on ``nn.Linear`` or ``nn.Conv2d`` (any geometry, grouped and depthwise included).

    Args:
        base: the layer to adapt; kept as ``base_layer`` with frozen weight and bias.
        rank: size of the four factors; alpha: the update is scaled by ``alpha / rank``.

    Parameters ``hada_w1_a``, ``hada_w2_a`` (``out x rank``) and ``hada_w1_b``, ``hada_w2_b`` (``rank x in'``).
    """

    adapter_kind = "LoHa"

    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int, alpha: float) -> None:
        super().__init__(base, rank, alpha)
        out, inn = flat_shape(base)
        kw = self._factory()
        self.hada_w1_a = nn.Parameter(torch.empty(out, rank, **kw))
        self.hada_w1_b = nn.Parameter(torch.empty(rank, inn, **kw))
        self.hada_w2_a = nn.Parameter(torch.empty(out, rank, **kw))
        self.hada_w2_b = nn.Parameter(torch.empty(rank, inn, **kw))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """PEFT's init: three factors Kaiming-uniform, ``hada_w2_b`` zero (the update starts at zero)."""
        for p in (self.hada_w1_a, self.hada_w1_b, self.hada_w2_a):
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        nn.init.zeros_(self.hada_w2_b)

    def _raw_delta(self, dtype: object) -> Tensor:
        factors = [p.to(dtype) for p in (self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b)]  # type: ignore[arg-type]
        return _HadamardProduct.apply(*factors)


class _HadamardProduct(torch.autograd.Function):
    """``(w1a @ w1b) * (w2a @ w2b)`` saving only the four small factors for backward (PEFT's ``HadaWeight``):
    autograd would keep both weight-sized products, which made LoHa use more training memory than full
    fine-tuning on vit_tiny."""

    @staticmethod
    def forward(ctx: Any, w1a: Tensor, w1b: Tensor, w2a: Tensor, w2b: Tensor) -> Tensor:
        ctx.save_for_backward(w1a, w1b, w2a, w2b)
        return (w1a @ w1b) * (w2a @ w2b)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        w1a, w1b, w2a, w2b = ctx.saved_tensors
        g1 = grad * (w2a @ w2b)
        g2 = grad * (w1a @ w1b)
        return g1 @ w1b.T, w1a.T @ g1, g2 @ w2b.T, w2a.T @ g2


@register
class LoHaStrategy(LycorisStrategy):
    """Wrap the selected Linear/Conv2d modules with :class:`LoHaLayer`."""

    method = "loha"
    checkpoint_classes = (LoHaLayer,)
    config_cls = LoHaConfig
    layer_cls = LoHaLayer

    def cost(self, t: Target) -> int:
        return loha_param_count(t.module, t.rank)

    def make_layer(self, t: Target) -> LoHaLayer:
        return LoHaLayer(t.module, t.rank, t.alpha)  # type: ignore[arg-type]
