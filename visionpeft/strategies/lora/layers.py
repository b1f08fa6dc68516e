"""LoRA layers for ``nn.Linear`` and ``nn.Conv2d`` (grouped, depthwise, dilated, any padding mode).

Each layer keeps the original module as ``base_layer`` (frozen) and adds two trainable tensors,
``lora_A`` and ``lora_B``; the output is ``base(x) + scale * B(A(dropout(x)))``. ``B`` starts at zero, so a
freshly wrapped model computes exactly what the original did. ``merge()`` folds ``scale * B @ A`` into the
base weight, ``unmerge()`` takes it out again, and ``to_base()`` returns the plain layer with the update
merged (the original architecture, original parameter names).

Fast paths (same function, chosen per call by ``_can_fuse``: plain float32/float64, no autocast, no active
dropout, a plain ``nn.Linear`` / ``nn.Conv2d`` base): a Linear runs as one fused autograd node
(:func:`.fused.lora_linear`); a grouped or depthwise conv, and an ordinary conv whose weight is small next to
its rank-``r`` activation path (:attr:`LoRAConv2d.weight_space`), runs in weight space, one convolution with
``W + scale * B A``. Other convs and every other call take the plain composition, which measured fastest for
them.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..adapter_layer import WeightAdapterLayer, conv_like
from .fused import lora_linear

__all__ = [
    "LoRALayer",
    "LoRALinear",
    "LoRAConv2d",
    "adapter_param_count",
    "base_weight_count",
    "lora_scale",
]


def lora_scale(rank: int, alpha: float, use_rslora: bool = False) -> float:
    """``alpha / rank`` (LoRA) or ``alpha / sqrt(rank)`` (rsLoRA: keeps the update's size stable at high
    rank)."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


class LoRALayer(WeightAdapterLayer):
    """Shared state of the LoRA layers; subclasses define the update's shape and the forward pass.

    Attributes:
        base_layer: the wrapped original module (weight and bias frozen).
        lora_A, lora_B: the trainable low-rank factors.
        rank, alpha, scale: adapter size, its strength and the resulting ``alpha / rank`` factor.
        merged: whether the update currently lives inside ``base_layer.weight``.
    """

    adapter_kind = "LoRA"
    lora_A: nn.Parameter
    lora_B: nn.Parameter

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float, use_rslora: bool) -> None:
        if rank <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank}")
        if alpha <= 0:
            raise ValueError(f"LoRA alpha must be > 0, got {alpha}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        super().__init__(base)
        self.rank = rank
        self.alpha = float(alpha)
        self.use_rslora = use_rslora
        self.scale = lora_scale(rank, alpha, use_rslora)
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @abstractmethod
    def _lora_forward(self, x: Tensor) -> Tensor:
        """``scale * B(A(x))`` for an input already in the adapter's dtype."""

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """HF PEFT's init: each rank-sized block of ``A`` (one per segment / group) Kaiming-uniform, ``B``
        zero, so a fresh adapter changes no output."""
        for a in self.lora_A.split(self.rank, dim=0):
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def forward(self, x: Tensor) -> Tensor:
        if not self.merged and self._can_fuse(x):
            return self._fused_forward(x)
        out = self.base_layer(x)
        if self.merged:
            return out
        # The LoRA path runs in the adapter's dtype (float32 under AMP / half bases) and is cast back.
        return self._add_lora(out, self.lora_dropout(x).to(self.lora_A.dtype))

    def _can_fuse(self, x: Tensor) -> bool:
        """Whether :meth:`_fused_forward` computes this call exactly: a plain base class (a subclass such as
        a weight-standardised conv has its own forward), one dtype throughout, no autocast (which would
        change the dtypes of the products) and no active dropout (the LoRA input would differ from ``x``)."""
        return (
            type(self.base_layer) is self._plain_type
            and x.dtype == self.lora_A.dtype == self.base_weight.dtype
            and not torch.is_autocast_enabled(x.device.type)
            and not (self.training and isinstance(self.lora_dropout, nn.Dropout))
        )

    _plain_type: type[nn.Module] = nn.Module

    def _fused_forward(self, x: Tensor) -> Tensor:
        """The same output as the plain path, computed by one fused autograd node (see ``fused.py``)."""
        raise NotImplementedError

    def _add_lora(self, out: Tensor, x: Tensor) -> Tensor:
        """``out + scale * B(A(x))``; subclasses may fuse the addition into the last product."""
        return out + self._lora_forward(x).to(out.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, scale={self.scale:g}, merged={self.merged}"


class LoRALinear(LoRALayer):
    """LoRA for ``nn.Linear``: ``y = W x + b + scale * B A x``.

    Args:
        base: the layer to adapt; kept as ``base_layer`` with frozen weight and bias.
        rank: width of the low-rank update. Raise it when the task is far from pretraining and the
            adapted model underfits; lower it to save parameters.
        alpha: strength; the update is scaled by ``alpha / rank``. Keep ``alpha = rank`` (scale 1) unless
            you want to change the effective learning rate of the adapter without touching the optimizer.
        dropout: dropout on the LoRA input only (regularises small data sets).
        use_rslora: scale by ``alpha / sqrt(rank)``: use for large ranks, where ``alpha / rank`` shrinks the
            update so much that it learns slowly.
        segments: output-row ranges ``(start, stop)`` that each get their own ``A``/``B``; rows outside every
            segment are not adapted. A fused ``attn.qkv`` of width ``d`` uses ``[(0, d), (2 * d, 3 * d)]`` to
            adapt only q and v. ``None`` adapts every output row with one ``A``/``B``.

    With ``S`` segments ``lora_A`` stacks the per-segment ``A`` (``S * rank x in``) and ``lora_B`` the
    per-segment ``B`` (``sum(stop - start) x rank``).
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
        segments: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(base, rank, alpha, dropout, use_rslora)
        out_f, in_f = base.out_features, base.in_features
        self.segments: tuple[tuple[int, int], ...] | None = (
            None if segments is None else _check_segments(segments, out_f)
        )
        n_seg = 1 if self.segments is None else len(self.segments)
        rows = out_f if self.segments is None else sum(b - a for a, b in self.segments)
        kw = self._factory()
        self.lora_A = nn.Parameter(torch.empty(n_seg * rank, in_f, **kw))
        self.lora_B = nn.Parameter(torch.zeros(rows, rank, **kw))
        self.reset_parameters()

    def _full_B(self, dtype: torch.dtype) -> Tensor:
        """``B`` as an ``out x (S * rank)`` block matrix: segment ``s`` feeds only its own output rows."""
        b = self.lora_B.to(dtype)
        if self.segments is None:
            return b
        full = b.new_zeros(self.base_layer.out_features, len(self.segments) * self.rank)
        start = 0
        for s, (lo, hi) in enumerate(self.segments):
            full[lo:hi, s * self.rank : (s + 1) * self.rank] = b[start : start + hi - lo]
            start += hi - lo
        return full

    def _delta(self, dtype: torch.dtype) -> Tensor:
        return self._full_B(dtype) @ self.lora_A.to(dtype) * self.scale

    _plain_type = nn.Linear

    def _fused_forward(self, x: Tensor) -> Tensor:
        base: nn.Linear = self.base_layer  # type: ignore[assignment]
        return lora_linear(x, base.weight, base.bias, self.lora_A, self._full_B(x.dtype), self.scale)

    def _lora_forward(self, x: Tensor) -> Tensor:
        h = F.linear(x, self.lora_A)
        # The scale goes into the small B (out x rank), not into the large activation.
        return F.linear(h, self._full_B(h.dtype) * self.scale)

    def _add_lora(self, out: Tensor, x: Tensor) -> Tensor:
        if self.segments is not None or out.dtype != x.dtype:
            return super()._add_lora(out, x)
        # One fused addmm instead of matmul + scale + add: rank-8 products are memory-bound on CPU, so
        # the passes over the (tokens x out) activation dominate LoRA's overhead (profiled on vit_tiny).
        h = F.linear(x, self.lora_A)
        flat = torch.addmm(out.reshape(-1, out.shape[-1]), h.reshape(-1, h.shape[-1]), self.lora_B.t(),
                           alpha=self.scale)
        return flat.view(out.shape)


#: Threshold of :attr:`LoRAConv2d.weight_space` for ordinary convolutions (from the measurements there).
WEIGHT_SPACE_RATIO = 5.0


class LoRAConv2d(LoRALayer):
    """LoRA for ``nn.Conv2d``: any kernel, stride, padding (``'same'`` too), dilation, padding mode, groups.

    ``A`` is a convolution with the base's geometry and ``groups=g`` producing ``rank * g`` channels; ``B``
    is a grouped 1x1 convolution back to the output channels. The rank is therefore per group: the weight
    block of group ``j`` gets the rank-``rank`` update ``B_j @ A_j``, so grouped and depthwise layers merge
    exactly. Parameters: ``rank * (in_channels * kh * kw + out_channels)``, independent of ``g`` - for a
    depthwise layer that is more than the layer itself (see ``max_param_fraction`` of the LoRA config).

    Args: as :class:`LoRALinear` (without ``segments``).
    """

    def __init__(
        self,
        base: nn.Conv2d,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
    ) -> None:
        super().__init__(base, rank, alpha, dropout, use_rslora)
        g = base.groups
        kh, kw_ = base.kernel_size
        kw = self._factory()
        self.lora_A = nn.Parameter(torch.empty(rank * g, base.in_channels // g, kh, kw_, **kw))
        self.lora_B = nn.Parameter(torch.zeros(base.out_channels, rank, 1, 1, **kw))
        self.reset_parameters()

    def _delta(self, dtype: torch.dtype) -> Tensor:
        base: nn.Conv2d = self.base_layer  # type: ignore[assignment]
        g, r = base.groups, self.rank
        a = self.lora_A.to(dtype).reshape(g, r, -1)  # (g, r, in/g * kh * kw)
        b = self.lora_B.to(dtype).reshape(g, base.out_channels // g, r)  # (g, out/g, r)
        return (torch.bmm(b, a) * self.scale).reshape(base.weight.shape)

    _plain_type = nn.Conv2d

    def _can_fuse(self, x: Tensor) -> bool:
        return self.weight_space and super()._can_fuse(x)

    @property
    def weight_space(self) -> bool:
        """Whether training runs in weight space (one convolution with ``W + scale * B A``): always for grouped
        and depthwise layers; for ``groups == 1`` when the weight is small next to the rank-``r`` activation
        path, ``C_out * C_in * kh * kw <= WEIGHT_SPACE_RATIO * r * (C_in * kh * kw + C_out)``.

        Weight space pays one weight gradient of the layer (what full fine-tuning pays); the activation path
        pays ``r``-channel convolutions at full resolution, memory-bound on CPU. Thin layers (YOLOv5n's 16-64
        channel convolutions) are cheaper in weight space, wide ones (ResNet-18's 64-512 channel 3x3 convs)
        in activation space. Measured round-robin (CPU, 2 threads, batch 16, rank 8): YOLOv5n at 256 px
        0.96x of full fine-tuning with this rule vs 1.02x on the activation path (23 of 56 convs switch);
        ResNet-18 at 224 px: no conv switches (all of them in weight space: 0.87x vs 0.68x).
        Concatenating ``[W; A]`` into one convolution with a fused backward measured slower than both.
        """
        base: nn.Conv2d = self.base_layer  # type: ignore[assignment]
        if base.groups > 1:
            return True
        c_out, c_in, kh, kw = base.weight.shape
        return c_out * c_in * kh * kw <= WEIGHT_SPACE_RATIO * self.rank * (c_in * kh * kw + c_out)

    def _fused_forward(self, x: Tensor) -> Tensor:
        """Weight space: one convolution with ``W + scale * B A``, for grouped / depthwise layers.

        The activation path computes ``rank * groups`` channels at full resolution and a grouped 1x1
        convolution back; the weight-space path costs one weight gradient of the (small) grouped weight.
        Measured on depthwise 3x3/5x5 layers (64-256 channels, batch 16): 5-12x faster than the activation
        path, about the cost of BitFit's frozen layer.
        """
        base: nn.Conv2d = self.base_layer  # type: ignore[assignment]
        return conv_like(base, x, base.weight + self._delta(x.dtype), base.bias)

    def _lora_forward(self, x: Tensor) -> Tensor:
        base: nn.Conv2d = self.base_layer  # type: ignore[assignment]
        h = conv_like(base, x, self.lora_A)
        # Scaled after B, as HF PEFT does, so float32 results agree with it to rounding.
        return F.conv2d(h, self.lora_B, None, 1, 0, 1, base.groups) * self.scale


def _check_segments(segments: Sequence[tuple[int, int]], out_features: int) -> tuple[tuple[int, int], ...]:
    segs = tuple((int(a), int(b)) for a, b in segments)
    if not segs:
        raise ValueError("segments must list at least one (start, stop) range, or be None")
    prev = 0
    for a, b in segs:
        if not (prev <= a < b <= out_features):
            raise ValueError(
                f"segments must be sorted, non-overlapping, non-empty ranges inside [0, {out_features}); "
                f"got {list(segs)}"
            )
        prev = b
    return segs


def base_weight_count(base: nn.Module) -> int:
    """Number of weight entries of a Linear/Conv2d (the bias is not counted)."""
    return base.weight.numel()  # type: ignore[union-attr]


def adapter_param_count(base: nn.Module, rank: int, segments: Sequence[tuple[int, int]] | None = None) -> int:
    """Parameters a LoRA adapter of ``rank`` on ``base`` would add (without building it).

    Linear: ``rank * (in + out)`` (with segments: ``S * rank * in + rank * rows``).
    Conv2d: ``rank * (in_channels * kh * kw + out_channels)`` for any ``groups`` (rank is per group).
    """
    if isinstance(base, nn.Linear):
        if segments is None:
            return rank * (base.in_features + base.out_features)
        rows = sum(b - a for a, b in segments)
        return len(segments) * rank * base.in_features + rank * rows
    if isinstance(base, nn.Conv2d):
        kh, kw = base.kernel_size
        return rank * (base.in_channels * kh * kw + base.out_channels)
    raise TypeError(f"LoRA supports nn.Linear and nn.Conv2d, not {type(base).__name__}")
