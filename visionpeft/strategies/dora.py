"""DoRA: weight-decomposed low-rank adaptation (Liu et al., ICML 2024), mergeable into plain weights.

DoRA splits each adapted weight into a direction and a per-output-channel magnitude: with ``V = W + scale *
B @ A`` (the LoRA update) the layer uses ``W' = m * V / ||V||``, the norm taken per output row (Linear) or per
output channel over ``(in / groups, kh, kw)`` (Conv2d). ``m`` (``lora_magnitude``) starts at ``||W||``, so with
``B = 0`` a fresh adapter changes nothing. As in the paper (section 4.3) and HF PEFT, ``||V||`` is treated as a
constant in the backward pass. The forward pass is PEFT's::

    y = base(x) + (m / ||V|| - 1) * (W x) + (m / ||V||) * scale * B A x

``merge()`` writes ``W'`` into the base weight (exact), ``unmerge()`` recovers ``W`` from ``W'`` with the norm
cached at merge time. Grouped and depthwise convs work as in our LoRA (rank per group); with ``qkv: qv`` only
the q and v rows get a magnitude, the k rows stay exactly as they were.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapter_layer import conv_like, delta_dtype
from .lora.layers import LoRAConv2d, LoRALayer, LoRALinear, adapter_param_count
from .lora.strategy import LoRAConfig, LoRAStrategy
from .registry import register
from .targets import Target

__all__ = ["DoRAConfig", "DoRALinear", "DoRAConv2d", "DoRAStrategy", "dora_param_count"]


class DoRAConfig(LoRAConfig):
    """DoRA on Linear and Conv2d layers: LoRA's direction update plus a trained magnitude per output channel.

    Every LoRA option applies with the same meaning (``rank``, ``alpha``, ``dropout``, ``targets``,
    ``exclude``, ``rank_pattern``, ``alpha_pattern``, ``use_rslora``, ``qkv``, ``max_param_fraction``,
    ``start_block``; see :class:`~visionpeft.strategies.lora.LoRAConfig`). Choose DoRA over LoRA at low ranks
    (4-8), where the paper reports the largest gains; it costs ``out_channels`` more parameters per layer and a
    weight-sized norm per forward pass (slower steps than LoRA, same cost as the base after merging).
    """

    method: Literal["dora"] = "dora"  # type: ignore[assignment]


def dora_param_count(base: nn.Module, rank: int, segments: tuple[tuple[int, int], ...] | None = None) -> int:
    """LoRA's parameters plus one magnitude per adapted output row/channel."""
    rows = base.weight.shape[0] if segments is None else sum(b - a for a, b in segments)  # type: ignore[union-attr]
    return adapter_param_count(base, rank, segments) + rows


class _DoRAMixin(LoRALayer):
    """Magnitude, norms and the DoRA forward/merge on top of a LoRA layer (Linear or Conv2d)."""

    adapter_kind = "DoRA"
    lora_magnitude: nn.Parameter
    _rows: Tensor | None

    def _init_magnitude(self, rows: Tensor | None) -> None:
        self.register_buffer("_rows", rows, persistent=False)
        with torch.no_grad():  # B = 0 at init: the magnitude is the base weight's own norm
            w = self.base_weight.to(self.lora_A.dtype)
            norm = torch.linalg.vector_norm(w.reshape(w.shape[0], -1), dim=1)
        self.lora_magnitude = nn.Parameter(norm if rows is None else norm[rows])
        self._merge_norm: Tensor | None = None

    def _weight_norm(self, delta: Tensor, dtype: torch.dtype) -> Tensor:
        """``||W + delta||`` per output row/channel, shape ``(out,)``."""
        v = self.base_weight.to(dtype) + delta.to(dtype)
        return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1)

    def _factor(self, norm: Tensor) -> Tensor:
        """``m / ||V||`` for adapted rows, 1 elsewhere; shape ``(out,)``."""
        norm = norm.clamp_min(torch.finfo(norm.dtype).tiny)
        mag = self.lora_magnitude.to(norm.dtype)
        if self._rows is None:
            return mag / norm
        return torch.ones_like(norm).index_copy(0, self._rows, mag / norm[self._rows])

    def _merged_weight(self, w: Tensor) -> Tensor:
        v = w + self._delta(w.dtype)
        return _rows_times(self._factor(torch.linalg.vector_norm(v.reshape(w.shape[0], -1), dim=1)), v)

    @torch.no_grad()
    def merge(self) -> None:
        """Write ``W'`` into the base weight, caching ``||V||`` for :meth:`unmerge` (no-op if merged)."""
        if self.merged:
            return
        w = self.base_weight
        self._merge_norm = self._weight_norm(self._delta(delta_dtype(w.dtype)), delta_dtype(w.dtype))
        super().merge()

    def _unmerged_weight(self, w: Tensor) -> Tensor:
        if self._merge_norm is None:  # merged in another process: the norm from the merged weight is unknown
            raise RuntimeError("DoRA: unmerge needs the weight norm cached by merge() in this process")
        factor = self._factor(self._merge_norm.to(w.dtype))
        self._merge_norm = None
        return _rows_times(1.0 / factor, w) - self._delta(w.dtype)

    def get_delta_weight(self) -> Tensor:
        """``W' - W``: what merging adds to the base weight (not additive in the adapter tensors)."""
        w = self.base_weight
        dt = torch.float64 if w.dtype == torch.float64 else torch.float32
        w0 = w.to(dt)
        with torch.no_grad():
            merged = _rows_times(self._factor(self._weight_norm(self._delta(dt), dt)), w0 + self._delta(dt))
        return (merged - w0).to(w.dtype)

    @abstractmethod
    def _base_no_bias(self, x: Tensor) -> Tensor:
        """``W x`` without bias, in the adapter's dtype."""

    @abstractmethod
    def _per_channel(self, v: Tensor) -> Tensor:
        """A per-output-channel vector shaped to broadcast over this layer's output."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        dt = self.lora_A.dtype
        dropped = self.lora_dropout(x).to(dt)
        bias = getattr(self.base_layer, "bias", None)
        if self.training and not isinstance(self.lora_dropout, nn.Identity):
            base = self._base_no_bias(dropped)  # as PEFT: the magnitude rescales W dropout(x)
        else:
            base = out.to(dt) if bias is None else out.to(dt) - self._per_channel(bias.to(dt))
        lora = self._lora_forward(dropped)
        with torch.no_grad():
            norm = self._weight_norm(self._delta(dt), dt)  # a constant for the gradient (paper, section 4.3)
        f = self._per_channel(self._factor(norm))
        return out + ((f - 1) * base + f * lora).to(out.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", dora=True"


def _rows_times(factor: Tensor, w: Tensor) -> Tensor:
    return factor.view(-1, *([1] * (w.dim() - 1))) * w


class DoRALinear(_DoRAMixin, LoRALinear):
    """DoRA for ``nn.Linear``. Args as :class:`~visionpeft.strategies.lora.LoRALinear`; ``lora_magnitude`` has
    one entry per adapted output row (all rows, or the rows of ``segments``)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False,
                 segments: tuple[tuple[int, int], ...] | None = None) -> None:
        super().__init__(base, rank, alpha, dropout, use_rslora, segments)
        rows = None if self.segments is None else torch.cat(
            [torch.arange(a, b, device=base.weight.device) for a, b in self.segments]
        )
        self._init_magnitude(rows)

    def _base_no_bias(self, x: Tensor) -> Tensor:
        return F.linear(x, self.base_weight.to(x.dtype))

    def _per_channel(self, v: Tensor) -> Tensor:
        return v  # the output's last dimension is the channel (any number of leading dims)


class DoRAConv2d(_DoRAMixin, LoRAConv2d):
    """DoRA for ``nn.Conv2d`` (any geometry, grouped and depthwise included; rank per group as in LoRA).
    ``lora_magnitude`` has one entry per output channel."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False) -> None:
        super().__init__(base, rank, alpha, dropout, use_rslora)
        self._init_magnitude(None)

    def _base_no_bias(self, x: Tensor) -> Tensor:
        return conv_like(self.base_layer, x, self.base_weight.to(x.dtype))  # type: ignore[arg-type]

    def _per_channel(self, v: Tensor) -> Tensor:
        return v.view(-1, 1, 1)


@register
class DoRAStrategy(LoRAStrategy):
    """Wrap the selected Linear/Conv2d modules with :class:`DoRALinear` / :class:`DoRAConv2d`."""

    method = "dora"
    checkpoint_classes = (DoRALinear, DoRAConv2d)
    config_cls = DoRAConfig
    layer_cls = _DoRAMixin

    def cost(self, t: Target) -> int:
        return dora_param_count(t.module, t.rank, t.segments)

    def make_layer(self, t: Target) -> LoRALayer:
        cfg = self.config
        if isinstance(t.module, nn.Linear):
            return DoRALinear(t.module, t.rank, t.alpha, cfg.dropout, cfg.use_rslora, t.segments)
        return DoRAConv2d(t.module, t.rank, t.alpha, cfg.dropout, cfg.use_rslora)  # type: ignore[arg-type]
