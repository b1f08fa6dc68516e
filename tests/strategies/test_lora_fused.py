"""The fast LoRA paths (fused Linear autograd node, weight-space grouped conv) against the plain composition.

Float64 throughout: ``gradcheck`` for the custom autograd function, and outputs plus every gradient of a wrapped
layer compared with the plain path (``base(x) + scale * B(A(x))`` through ordinary autograd) to 1e-12.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from visionpeft.strategies.lora.fused import lora_linear
from visionpeft.strategies.lora.layers import LoRAConv2d, LoRALayer, LoRALinear

TOL = 1e-12


def _rand(*shape: int, grad: bool = True) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("with_bias", [True, False])
def test_lora_linear_gradcheck(with_bias: bool) -> None:
    torch.manual_seed(0)
    x, w, a, b = _rand(2, 3, 5), _rand(4, 5), _rand(2, 5), _rand(4, 2)
    bias = _rand(4) if with_bias else None
    assert torch.autograd.gradcheck(lambda *t: lora_linear(t[0], t[1], bias, t[2], t[3], 0.7), (x, w, a, b))


@pytest.mark.parametrize("need", ["x", "a", "b", "w"])
def test_lora_linear_grads_match_plain_composition(need: str) -> None:
    """Each input's gradient on its own (the others frozen), so every ``needs_input_grad`` branch runs."""
    torch.manual_seed(1)
    x, w, bias, a, b = (_rand(7, 6, grad=False), _rand(5, 6, grad=False), _rand(5, grad=False),
                        _rand(3, 6, grad=False), _rand(5, 3, grad=False))
    target = {"x": x, "a": a, "b": b, "w": w}[need]
    target.requires_grad_(True)
    g = torch.randn(7, 5, dtype=torch.float64)
    (lora_linear(x, w, bias, a, b, 1.3) * g).sum().backward()
    fused = target.grad.clone()
    target.grad = None
    ref = F.linear(x, w, bias) + 1.3 * F.linear(F.linear(x, a), b)
    (ref * g).sum().backward()
    assert (fused - target.grad).abs().max() <= TOL


def _plain(layer: LoRALayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's plain path: base output plus the LoRA branch through ordinary autograd."""
    return layer._add_lora(layer.base_layer(x), x)


def _grads(layer: LoRALayer, x: torch.Tensor, fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.detach().requires_grad_(True)
    out = fn(x)
    g = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    params = [p for p in layer.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * g).sum(), [x, *params])
    return out.detach(), list(grads)


def _randomize(layer: LoRALayer) -> None:
    with torch.no_grad():
        layer.lora_A.normal_()
        layer.lora_B.normal_(std=0.3)


@pytest.mark.parametrize("case", [
    dict(base=lambda: nn.Linear(6, 9), x=(4, 5, 6), kw={}),
    dict(base=lambda: nn.Linear(4, 12), x=(3, 4), kw=dict(segments=[(0, 4), (8, 12)])),  # qkv q/v
    dict(base=lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6), x=(2, 6, 7, 7), kw={}),  # depthwise
    dict(base=lambda: nn.Conv2d(8, 4, 3, stride=2, padding=2, dilation=2, groups=2), x=(2, 8, 9, 9), kw={}),
    dict(base=lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect", bias=False),
         x=(2, 4, 6, 6), kw={}),
    dict(base=lambda: nn.Conv2d(6, 5, 3, stride=2, padding=1), x=(2, 6, 9, 9), kw={}),  # thin ordinary conv
    dict(base=lambda: nn.Conv2d(4, 6, 1, bias=False), x=(2, 4, 5, 5), kw={}),  # thin 1x1
])
def test_fast_path_equals_plain_path_float64(case: dict) -> None:
    torch.manual_seed(2)
    base = case["base"]().double()
    cls = LoRALinear if isinstance(base, nn.Linear) else LoRAConv2d
    layer = cls(base, rank=2, alpha=3.0, **case["kw"])
    _randomize(layer)
    if base.bias is not None:
        base.bias.requires_grad_(True)  # LoRA + a trainable bias (e.g. with BitFit): that gradient too
    x = torch.randn(*case["x"], dtype=torch.float64)
    assert layer._can_fuse(x), "the fast path must be the one under test"
    fast_out, fast_grads = _grads(layer, x, layer)
    plain_out, plain_grads = _grads(layer, x, lambda t: _plain(layer, t))
    assert (fast_out - base(x)).abs().max() > 1e-3  # the adapter is not a no-op
    assert (fast_out - plain_out).abs().max() <= TOL
    for f, p in zip(fast_grads, plain_grads, strict=True):
        assert (f - p).abs().max() <= TOL


def test_fast_path_is_used_only_where_exact() -> None:
    lin = LoRALinear(nn.Linear(4, 4), rank=2, alpha=2.0)
    x = torch.randn(3, 4)
    assert type(lin(x).grad_fn).__name__ == "ViewBackward0"  # the fused node's output, reshaped
    assert lin(x).grad_fn.next_functions[0][0].name() == "_LoRALinearFnBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not lin._can_fuse(x)  # autocast changes the products' dtypes: plain path
    drop = LoRALinear(nn.Linear(4, 4), rank=2, alpha=2.0, dropout=0.5).train()
    assert not drop._can_fuse(x) and drop.eval()._can_fuse(x)  # active dropout: the LoRA input differs
    wide = LoRAConv2d(nn.Conv2d(64, 64, 3), rank=2, alpha=2.0)  # a wide ordinary conv: activation path
    assert not wide.weight_space and not wide._can_fuse(torch.randn(1, 64, 5, 5))

    class Standardized(nn.Linear):  # a subclass with its own forward must keep it
        def forward(self, x):
            return F.linear(x, self.weight / self.weight.norm(), self.bias)

    assert not LoRALinear(Standardized(4, 4), rank=2, alpha=2.0)._can_fuse(x)


@pytest.mark.parametrize(("conv", "rank", "weight_space"), [
    (nn.Conv2d(16, 32, 3), 8, True),  # YOLOv5n-sized: 4,608 <= 5 * 8 * (144 + 32) = 7,040
    (nn.Conv2d(32, 32, 1), 8, True),  # 1,024 <= 5 * 8 * 64
    (nn.Conv2d(64, 64, 3), 8, False),  # ResNet-18 layer1: 36,864 > 5 * 8 * (576 + 64) = 25,600
    (nn.Conv2d(256, 256, 1), 8, False),  # 65,536 > 5 * 8 * 512
    (nn.Conv2d(256, 256, 1), 64, True),  # a high rank makes the activation path the dearer one
    (nn.Conv2d(256, 256, 3, groups=256), 8, True),  # depthwise: always
])
def test_weight_space_rule_for_ordinary_convs(conv: nn.Conv2d, rank: int, weight_space: bool) -> None:
    """``C_out * C_in * kh * kw <= WEIGHT_SPACE_RATIO * r * (C_in * kh * kw + C_out)`` (grouped: always)."""
    layer = LoRAConv2d(conv, rank=rank, alpha=float(rank))
    assert layer.weight_space is weight_space
    assert layer._can_fuse(torch.randn(1, conv.in_channels, 4, 4)) is weight_space
