"""LoKr: Kronecker-product updates (LyCORIS; Edalati et al., KronA, 2022), as in HF PEFT.

The weight's output and input sizes are factorised, ``out = a * b`` and ``in / groups = c * d`` (factors near
the square root, or ``decompose_factor``), and the update is a Kronecker product

    delta = scale * kron(W1, W2),    W1: a x c,    W2: b x d (x kh x kw for convs),    scale = alpha / rank

``W2`` is stored as a rank-``rank`` product ``W2a @ W2b`` when ``rank < max(b, d) / 2`` (else in full); ``W1``
likewise only with ``decompose_both``. A Kronecker product is full-rank, so LoKr can express updates LoRA
cannot, with very few parameters on wide layers. Init as PEFT: ``W1`` (or ``W1a``) zero, so a fresh adapter
changes nothing. Convolutions use PEFT's default flattened form (not the CP/"effective conv" variant).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from .lycoris import _SHARED_ARGS, DeltaWeightLayer, LycorisConfig, LycorisStrategy
from .registry import register
from .targets import Target

__all__ = ["LoKrConfig", "LoKrLayer", "LoKrStrategy", "factorization", "lokr_shapes", "lokr_param_count"]


class LoKrConfig(LycorisConfig):
    __doc__ = (
        "LoKr (Kronecker product of a small and a low-rank factor) on Linear and Conv2d layers, mergeable.\n\n"
        "    Use it for the fewest parameters per layer on wide layers (ViT linears, wide convs) while keeping\n"
        "    full-rank updates.\n\n    Args:"
        + _SHARED_ARGS
        + """        decompose_both: also store the small factor ``W1`` as a low-rank product (when ``rank`` is
            below half its size). Turn on only for very wide layers where ``W1`` itself is large.
        decompose_factor: target size of one factor of each dimension; ``-1`` (default) splits near the
            square root. Larger values move parameters from ``W2`` to ``W1``.
"""
    )

    method: Literal["lokr"] = "lokr"
    decompose_both: bool = False
    decompose_factor: int = Field(-1, ge=-1)

    @model_validator(mode="after")
    def _no_budget(self) -> LoKrConfig:
        if self.budget is not None:
            raise ValueError(
                "budget is not supported for lokr: a LoKr adapter's size is set mostly by the factorisation of "
                "each layer (its Kronecker factor W1 and, from rank max(b, d) / 2 on, a full W2), not by the rank, "
                "so ranks cannot fill a budget; use rank, or budget with lora, dora or loha"
            )
        return self


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """``(m, n)`` with ``m * n = dimension`` and ``m <= n``: ``m`` is ``factor`` when it divides, else the
    largest divisor not above ``factor`` that keeps ``m + n`` shrinking (LyCORIS' algorithm, as in PEFT).

    >>> factorization(256), factorization(128), factorization(127), factorization(128, 4)
    ((16, 16), (8, 16), (1, 127), (4, 32))
    """
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > m + n or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


def lokr_shapes(base: nn.Module, rank: int, decompose_both: bool = False, factor: int = -1) -> dict[str, tuple]:
    """Parameter name -> shape of a LoKr adapter on ``base`` (PEFT's rules for when to factorise)."""
    if isinstance(base, nn.Conv2d):
        in_dim, out_dim, kernel = base.in_channels // base.groups, base.out_channels, tuple(base.kernel_size)
    elif isinstance(base, nn.Linear):
        in_dim, out_dim, kernel = base.in_features, base.out_features, ()
    else:
        raise TypeError(f"LoKr supports nn.Linear and nn.Conv2d, not {type(base).__name__}")
    (a, b), (c, d) = factorization(out_dim, factor), factorization(in_dim, factor)
    shapes: dict[str, tuple] = {}
    if decompose_both and rank < max(a, c) / 2:
        shapes |= {"lokr_w1_a": (a, rank), "lokr_w1_b": (rank, c)}
    else:
        shapes["lokr_w1"] = (a, c)
    if rank < max(b, d) / 2:
        shapes |= {"lokr_w2_a": (b, rank), "lokr_w2_b": (rank, d * math.prod(kernel))}
    else:
        shapes["lokr_w2"] = (b, d, *kernel)
    return shapes


def lokr_param_count(base: nn.Module, rank: int, decompose_both: bool = False, factor: int = -1) -> int:
    """Sum of the factor sizes of :func:`lokr_shapes`."""
    return sum(math.prod(s) for s in lokr_shapes(base, rank, decompose_both, factor).values())


class LoKrLayer(DeltaWeightLayer):
    """LoKr on ``nn.Linear`` or ``nn.Conv2d`` (any geometry, grouped and depthwise included).

    Args:
        base: the layer to adapt; kept as ``base_layer`` with frozen weight and bias.
        rank: rank of the factorised ``W2`` (and ``W1`` with ``decompose_both``); alpha: scale ``alpha / rank``.
        decompose_both, decompose_factor: see :class:`LoKrConfig`.

    Parameters: ``lokr_w1`` or ``lokr_w1_a``/``lokr_w1_b``, and ``lokr_w2`` or ``lokr_w2_a``/``lokr_w2_b``.
    """

    adapter_kind = "LoKr"

    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int, alpha: float, decompose_both: bool = False,
                 decompose_factor: int = -1) -> None:
        super().__init__(base, rank, alpha)
        kw = self._factory()
        for name, shape in lokr_shapes(base, rank, decompose_both, decompose_factor).items():
            setattr(self, name, nn.Parameter(torch.empty(shape, **kw)))
        self.reset_parameters()

    def _factor_params(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters(recurse=False) if n.startswith("lokr_")}

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """PEFT's init: ``W1`` (or ``W1a``) zero, everything else Kaiming-uniform: the update starts at zero."""
        for name, p in self._factor_params().items():
            if name in ("lokr_w1", "lokr_w1_a"):
                nn.init.zeros_(p)
            else:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))

    def _raw_delta(self, dtype: object) -> Tensor:
        p = {n: t.to(dtype) for n, t in self._factor_params().items()}  # type: ignore[arg-type]
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"]
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return torch.kron(w1, w2.contiguous())


@register
class LoKrStrategy(LycorisStrategy):
    """Wrap the selected Linear/Conv2d modules with :class:`LoKrLayer`."""

    method = "lokr"
    checkpoint_classes = (LoKrLayer,)
    config_cls = LoKrConfig
    layer_cls = LoKrLayer
    config: LoKrConfig

    def cost(self, t: Target) -> int:
        return lokr_param_count(t.module, t.rank, self.config.decompose_both, self.config.decompose_factor)

    def make_layer(self, t: Target) -> LoKrLayer:
        cfg = self.config
        return LoKrLayer(t.module, t.rank, t.alpha, cfg.decompose_both, cfg.decompose_factor)  # type: ignore[arg-type]
