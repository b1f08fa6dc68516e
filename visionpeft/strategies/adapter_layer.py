"""The shared wrapper of every weight-space adapter (LoRA, DoRA, LoHa, LoKr) on ``nn.Linear`` / ``nn.Conv2d``.

A :class:`WeightAdapterLayer` keeps the original module as ``base_layer`` (frozen) and adds trainable tensors
whose effect can be written as a new weight of the base's shape. It owns ``merge`` (fold the update into the
base weight, in place), ``unmerge`` (take it out again) and ``to_base`` (the plain layer with the update
merged: the original architecture and parameter names). Subclasses define the update (``_delta``) and the
forward pass; methods whose merged weight is not ``W + delta`` (DoRA) override ``_merged_weight`` and
``_unmerged_weight``.

Code written for the plain layer keeps working on a wrapped one (:class:`PlainLayerView`): ``weight`` /
``bias`` read the effective tensors (the update included, computed exactly as ``merge`` computes them), the
geometry attributes (``in_channels``, ``kernel_size``, ``in_features`` ...) are the base layer's, and
*assigning* ``weight`` or ``bias`` replaces the effective tensors and folds the update in for good. That is what
Ultralytics' ``fuse()`` does to every ``Conv`` block (``fuse_conv_and_bn`` reads ``conv.weight`` and assigns the
folded Conv+BN tensors back, or builds a new conv from the geometry in older versions), so an adapted, unmerged
detector fuses exactly as the merged one does (``predict``, ``val`` and ``export`` of a run's ``best.pt`` /
``last.pt`` go through it).

Dtypes: adapters train in float32 on half/bfloat16 bases (and under AMP) and in float64 on float64 bases, so
numerical tests merge exactly; updates are computed in float32/float64 and cast to the base's dtype.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PlainLayerView", "WeightAdapterLayer", "adapter_dtype", "delta_dtype", "explicit_padding", "conv_like"]


def adapter_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """Dtype of adapter tensors for a base of ``base_dtype``: float64 stays, everything else float32."""
    return base_dtype if base_dtype in (torch.float32, torch.float64) else torch.float32


def delta_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """Dtype in which weight updates are computed before being cast to the base's dtype."""
    return torch.float64 if base_dtype == torch.float64 else torch.float32


#: Attributes of the wrapped layer that a wrapper shows as its own: the geometry of Linear/Conv2d (code that
#: rebuilds a conv from a fused one reads them) and a norm layer's statistics (``fuse_conv_and_bn`` reads
#: ``bn.running_mean`` ...). Only attributes the base layer really has resolve.
BASE_ATTRIBUTES = frozenset({
    "in_features", "out_features", "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
    "groups", "padding_mode", "transposed", "output_padding", "running_mean", "running_var", "num_batches_tracked",
    "eps", "momentum", "affine", "track_running_stats", "num_features", "normalized_shape", "num_groups",
    "num_channels",
})


class PlainLayerView:
    """Mixin for a wrapper module with ``base_layer``: it reads and writes like the plain layer.

    ``weight`` / ``bias`` are the effective tensors (:meth:`effective_weight` / :meth:`effective_bias`, no
    gradient). Assigning either replaces the effective tensor and folds the update in for good (``merged`` and
    ``folded`` become true; :meth:`unmerge` then raises). Attributes in :data:`BASE_ATTRIBUTES` are read from the
    base layer.
    """

    #: Set once ``weight`` / ``bias`` was assigned (e.g. by Ultralytics' Conv+BN fusion): the update lives
    #: inside the base tensors for good. A class default, so layers unpickled from older files have it.
    folded: bool = False
    merged: bool
    base_layer: nn.Module

    @property
    def weight(self) -> Tensor:
        """The weight the layer effectively applies (the base weight itself, detached, once merged).

        Unmerged it is a new tensor computed exactly as ``merge`` computes the merged weight, so fusing it
        equals merge-then-fuse; in-place edits of it change nothing. Assign ``weight`` to replace it.
        """
        if self.merged:
            return self.base_layer.weight.detach()  # type: ignore[union-attr]
        with torch.no_grad():
            return self.effective_weight()

    @property
    def bias(self) -> Tensor | None:
        """The bias the layer effectively applies (the base's, unless the method shifts it)."""
        if self.merged:
            return self.base_layer.bias  # type: ignore[union-attr,return-value]
        with torch.no_grad():
            return self.effective_bias()

    def effective_weight(self) -> Tensor:
        """The merged weight, computed without merging (base weight's dtype)."""
        raise NotImplementedError

    def effective_bias(self) -> Tensor | None:
        """The merged bias, computed without merging; the base's own bias by default."""
        return self.base_layer.bias  # type: ignore[union-attr,return-value]

    def __getattr__(self, name: str) -> object:
        try:
            return super().__getattr__(name)  # type: ignore[misc]  # nn.Module: parameters, buffers, submodules
        except AttributeError:
            base = self.__dict__.get("_modules", {}).get("base_layer")
            if name in BASE_ATTRIBUTES and base is not None:
                return getattr(base, name)
            raise

    def __setattr__(self, name: str, value: object) -> None:
        # Assigning weight/bias replaces the effective tensors (Ultralytics' fuse_conv_and_bn does
        # ``conv.weight, conv.bias = fused``); anything else is a normal module attribute.
        if name in ("weight", "bias") and "base_layer" in self.__dict__.get("_modules", {}):
            self._assign(name, value)
        else:
            super().__setattr__(name, value)

    def _assign(self, name: str, value: object) -> None:
        """The new tensor is the whole effective ``weight`` / ``bias``: the update is folded in for good."""
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"{type(self).__name__}.{name} must be a tensor, got {type(value).__name__}")
        if value is not None and not isinstance(value, nn.Parameter):
            value = nn.Parameter(value, requires_grad=value.requires_grad)
        old = getattr(self.base_layer, name)
        if name == "weight" and (value is None or value.shape != old.shape):
            got = None if value is None else tuple(value.shape)
            raise ValueError(f"{type(self).__name__}.weight must keep the shape {tuple(old.shape)}, got {got}")
        self._fold_before_assign(name)
        setattr(self.base_layer, name, value)

    def _fold_before_assign(self, name: str) -> None:
        """Make the base tensors hold the effective ones before ``name`` is replaced (a weight update needs
        nothing: the new weight replaces it; an update that also moves the bias merges first)."""
        if name == "weight":
            self.merged = self.folded = True


class WeightAdapterLayer(PlainLayerView, nn.Module, ABC):
    """Wrap a Linear/Conv2d with a mergeable update.

    Attributes:
        base_layer: the wrapped original module (weight and bias frozen).
        merged: whether the update currently lives inside ``base_layer.weight``.
        folded: the weight was replaced by code that folded the update in (Conv+BN fusion); no unmerge.
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

    def effective_weight(self) -> Tensor:
        """``_merged_weight`` of the current base weight, in its dtype: exactly what :meth:`merge` writes."""
        w = self.base_weight
        return self._merged_weight(w.to(delta_dtype(w.dtype))).to(w.dtype)

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
        """Take the update out of the base weight again (no-op if not merged).

        Raises:
            RuntimeError: the weight was replaced (Conv+BN fusion folded the update into it for good).
        """
        if not self.merged:
            return
        if self.folded:
            raise RuntimeError(f"{type(self).__name__}: the {self.adapter_kind} update was folded into a replaced "
                               "weight (e.g. by Ultralytics' Conv+BN fuse()); it cannot be taken out again")
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


def conv_like(base: nn.Conv2d, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x`` convolved with ``weight`` (plus ``bias``, default none) using ``base``'s stride, padding (any mode),
    dilation and groups."""
    g = base.groups
    if base.padding_mode != "zeros":
        # Same two-step path as nn.Conv2d for reflect/replicate/circular padding.
        x = F.pad(x, explicit_padding(base), mode=base.padding_mode)
        return F.conv2d(x, weight, bias, base.stride, (0, 0), base.dilation, g)
    return F.conv2d(x, weight, bias, base.stride, base.padding, base.dilation, g)
