"""The shared wrapper of every weight-space adapter (LoRA, DoRA, LoHa, LoKr) on ``nn.Linear`` / ``nn.Conv2d``.

A :class:`WeightAdapterLayer` keeps the original module as ``base_layer`` (frozen) and adds trainable tensors
whose effect can be written as a new weight of the base's shape. It owns ``merge`` (fold the update into the
base weight, in place), ``unmerge`` (take it out again) and ``to_base`` (the plain layer with the update
merged: the original architecture and parameter names). Subclasses define the update (``_delta``) and the
forward pass; methods whose merged weight is not ``W + delta`` (DoRA) override ``_merged_weight`` and
``_unmerged_weight``.

Dtypes: adapters train in float32 on half/bfloat16 bases (and under AMP) and in float64 on float64 bases, so
numerical tests merge exactly; updates are computed in float32/float64 and cast to the base's dtype.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["WeightAdapterLayer", "adapter_dtype", "delta_dtype", "explicit_padding", "conv_like"]


def adapter_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """Dtype of adapter tensors for a base of ``base_dtype``: float64 stays, everything else float32."""
    return base_dtype if base_dtype in (torch.float32, torch.float64) else torch.float32


def delta_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """Dtype in which weight updates are computed before being cast to the base's dtype."""
    return torch.float64 if base_dtype == torch.float64 else torch.float32


class WeightAdapterLayer(nn.Module, ABC):
    """Wrap a Linear/Conv2d with a mergeable update.

    Attributes:
        base_layer: the wrapped original module (weight and bias frozen).
        merged: whether the update currently lives inside ``base_layer.weight``.
        adapter_kind: the method's display name in messages (``"LoRA"``, ``"LoHa"`` ...).
    """

    adapter_kind: ClassVar[str] = "weight"
    base_layer: nn.Module

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base_layer = base
        self.merged = False
        # Restored by to_base(): whatever trainability the caller had set before the adapter froze the layer.
        self._base_requires_grad = {n: p.requires_grad for n, p in base.named_parameters()}
        for p in base.parameters():
            p.requires_grad_(False)

    @property
    def base_weight(self) -> Tensor:
        return self.base_layer.weight  # type: ignore[return-value]

    def _factory(self) -> dict:
        """``device`` / ``dtype`` keyword arguments for new adapter tensors."""
        w = self.base_weight
        return {"device": w.device, "dtype": adapter_dtype(w.dtype)}

    @abstractmethod
    def _delta(self, dtype: torch.dtype) -> Tensor:
        """The additive weight update in ``dtype``, shaped like the base weight."""

    def _merged_weight(self, w: Tensor) -> Tensor:
        """The weight :meth:`merge` writes, from the unmerged base weight ``w`` (float32/float64)."""
        return w + self._delta(w.dtype)

    def _unmerged_weight(self, w: Tensor) -> Tensor:
        """The original weight from the merged weight ``w``; inverse of :meth:`_merged_weight`."""
        return w - self._delta(w.dtype)

    def get_delta_weight(self) -> Tensor:
        """The additive update in the base weight's dtype (computed in float32/float64)."""
        w = self.base_weight
        return self._delta(delta_dtype(w.dtype)).to(w.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight in place (no-op if already merged)."""
        if self.merged:
            return
        w = self.base_weight
        w.copy_(self._merged_weight(w.to(delta_dtype(w.dtype))).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of the base weight again (no-op if not merged)."""
        if not self.merged:
            return
        w = self.base_weight
        w.copy_(self._unmerged_weight(w.to(delta_dtype(w.dtype))).to(w.dtype))
        self.merged = False

    def to_base(self) -> nn.Module:
        """The original layer with the update merged into its weight; the adapter is dropped."""
        self.merge()
        base = self.base_layer
        for name, p in base.named_parameters():
            p.requires_grad_(self._base_requires_grad.get(name, p.requires_grad))
        return base

    def adapter_parameter_names(self) -> list[str]:
        """Names (relative to this layer) of the adapter's own parameters."""
        return [n for n, _ in self.named_parameters() if not n.startswith("base_layer.")]

    def adapter_param_count(self) -> int:
        """Number of adapter parameter elements (the base layer is not counted)."""
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("base_layer."))


def explicit_padding(conv: nn.Conv2d) -> tuple[int, ...]:
    """The ``F.pad`` argument nn.Conv2d uses for non-zero padding modes (left/right, top/bottom)."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        pads: list[int] = []
        # 'same': total d * (k - 1), the odd pixel goes right/bottom, exactly like nn.Conv2d.
        for d, k in zip(reversed(conv.dilation), reversed(conv.kernel_size)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


def conv_like(base: nn.Conv2d, x: Tensor, weight: Tensor) -> Tensor:
    """``x`` convolved with ``weight`` using ``base``'s stride, padding (any mode), dilation and groups; no bias."""
    g = base.groups
    if base.padding_mode != "zeros":
        # Same two-step path as nn.Conv2d for reflect/replicate/circular padding.
        x = F.pad(x, explicit_padding(base), mode=base.padding_mode)
        return F.conv2d(x, weight, None, base.stride, (0, 0), base.dilation, g)
    return F.conv2d(x, weight, None, base.stride, base.padding, base.dilation, g)
