"""DoRA layers: HF PEFT parity, independent float64 reference, exact merge on every conv geometry, counts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.strategies.test_lora_layers import CONV_CASES, _check_merge_roundtrip, _conv, _max_diff
from visionpeft.strategies.dora import DoRAConv2d, DoRALinear, dora_param_count


def _randomize(layer, seed: int = 0) -> None:
    """Non-zero B and a magnitude away from ||W||, so neither the LoRA part nor the rescaling is a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dt = layer.lora_A.dtype
        layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g, dtype=dt))
        layer.lora_B.copy_(0.1 * torch.randn(layer.lora_B.shape, generator=g, dtype=dt))
        layer.lora_magnitude.mul_(0.5 + torch.rand(layer.lora_magnitude.shape, generator=g, dtype=dt))


def _reference_weight(layer) -> torch.Tensor:
    """m * V / ||V|| row by row, with V = W + scale * B @ A written out per group (float64, plain loops)."""
    base = layer.base_layer
    w = base.weight.detach()
    a, b, m = layer.lora_A.detach(), layer.lora_B.detach(), layer.lora_magnitude.detach()
    if isinstance(base, nn.Linear):
        v = w + layer.scale * b @ a
    else:
        g, r = base.groups, layer.rank
        og = base.out_channels // g
        blocks = [b[j * og:(j + 1) * og, :, 0, 0] @ a[j * r:(j + 1) * r].reshape(r, -1) for j in range(g)]
        v = w + layer.scale * torch.cat(blocks).reshape(w.shape)
    rows = [m[i] * v[i] / v[i].norm() for i in range(v.shape[0])]
    return torch.stack(rows)


def test_linear_matches_independent_reference_float64():
    torch.manual_seed(0)
    base = nn.Linear(6, 10).double()
    layer = DoRALinear(base, rank=3, alpha=5.0)
    _randomize(layer)
    x = torch.randn(4, 6, dtype=torch.float64)
    expected = F.linear(x, _reference_weight(layer), base.bias)
    assert _max_diff(layer(x), expected) <= 1e-10
    _check_merge_roundtrip(layer, x)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_matches_reference_and_merges_exactly(case):
    base = _conv(case)
    layer = DoRAConv2d(base, rank=2, alpha=3.0)
    _randomize(layer, seed=1)
    x = torch.randn(2, base.in_channels, 9, 11, dtype=torch.float64)
    reference = copy.deepcopy(base)
    with torch.no_grad():
        reference.weight.copy_(_reference_weight(layer))
    assert _max_diff(layer(x), reference(x)) <= 1e-10
    assert _max_diff(layer.get_delta_weight(), reference.weight - base.weight) <= 1e-10
    _check_merge_roundtrip(layer, x)


def test_qv_segments_leave_k_rows_untouched_and_merge():
    torch.manual_seed(0)
    d = 8
    base = nn.Linear(d, 3 * d).double()
    layer = DoRALinear(base, rank=2, alpha=2.0, segments=((0, d), (2 * d, 3 * d)))
    assert layer.lora_magnitude.shape == (2 * d,)
    _randomize(layer)
    x = torch.randn(5, d, dtype=torch.float64)
    out, ref = layer(x), base(x)
    assert torch.equal(out[:, d:2 * d], ref[:, d:2 * d])
    assert _max_diff(out[:, :d], ref[:, :d]) > 1e-3 and _max_diff(out[:, 2 * d:], ref[:, 2 * d:]) > 1e-3
    _check_merge_roundtrip(layer, x)


@pytest.mark.parametrize("make", [
    lambda: DoRALinear(nn.Linear(8, 5), 4, 4.0),
    lambda: DoRAConv2d(nn.Conv2d(**CONV_CASES["groups2"]), 2, 2.0),
    lambda: DoRAConv2d(nn.Conv2d(**CONV_CASES["same_depthwise"]), 2, 2.0),
])
def test_fresh_adapter_changes_nothing(make):
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(2, 8) if isinstance(layer, DoRALinear) else torch.randn(2, layer.base_layer.in_channels, 6, 6)
    assert (layer(x) - layer.base_layer(x)).abs().max() <= 1e-6  # m = ||W||: rescaling by 1 up to rounding
    # The magnitude starts at the base weight's per-row norm.
    w = layer.base_layer.weight.detach()
    assert torch.allclose(layer.lora_magnitude, w.reshape(w.shape[0], -1).norm(dim=1))


def test_golden_parameter_counts():
    lin = DoRALinear(nn.Linear(16, 32), rank=4, alpha=4.0)
    assert lin.adapter_param_count() == 4 * 16 + 32 * 4 + 32
    qkv = DoRALinear(nn.Linear(8, 24), rank=2, alpha=2.0, segments=((0, 8), (16, 24)))
    assert qkv.adapter_param_count() == 2 * (2 * 8) + (8 + 8) * 2 + (8 + 8)
    conv = DoRAConv2d(nn.Conv2d(8, 12, 3, groups=4), rank=2, alpha=2.0)
    assert conv.adapter_param_count() == (2 * 4) * (8 // 4) * 3 * 3 + 12 * 2 + 12
    for layer, segs in ((lin, None), (qkv, ((0, 8), (16, 24))), (conv, None)):
        assert dora_param_count(layer.base_layer, layer.rank, segs) == layer.adapter_param_count()
        assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == layer.adapter_param_count()
    assert sorted(lin.adapter_parameter_names()) == ["lora_A", "lora_B", "lora_magnitude"]


def test_weight_norm_gets_no_gradient_but_magnitude_and_factors_do():
    torch.manual_seed(0)
    layer = DoRALinear(nn.Linear(6, 4), rank=2, alpha=2.0)
    _randomize(layer)
    layer(torch.randn(3, 6)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (layer.lora_A, layer.lora_B,
                                                                         layer.lora_magnitude))
    assert layer.base_layer.weight.grad is None


def _peft_pair(base: nn.Module, rank: int, alpha: float, use_rslora: bool):
    peft = pytest.importorskip("peft")
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=["0"], use_rslora=use_rslora, use_dora=True)
    peft_model = peft.get_peft_model(nn.Sequential(copy.deepcopy(base)), cfg)
    peft_layer = peft_model.base_model.model[0]
    cls = DoRALinear if isinstance(base, nn.Linear) else DoRAConv2d
    ours = cls(base, rank, alpha, use_rslora=use_rslora)
    _randomize(ours, seed=5)
    mag = peft_layer.lora_magnitude_vector["default"].weight
    with torch.no_grad():
        peft_layer.lora_A["default"].weight.copy_(ours.lora_A)
        peft_layer.lora_B["default"].weight.copy_(ours.lora_B)
        mag.copy_(ours.lora_magnitude.view_as(mag))
    return peft_model.eval(), ours.eval()


@pytest.mark.parametrize("use_rslora", [False, True])
@pytest.mark.parametrize("kind", ["linear", "linear_3d", "conv", "conv_strided"])
def test_matches_hf_peft_dora(kind, use_rslora):
    """PEFT supports DoRA on Linear and ungrouped Conv2d; same weights give the same output and merged weight."""
    torch.manual_seed(0)
    base, x = {
        "linear": (nn.Linear(10, 12), torch.randn(4, 10)),
        "linear_3d": (nn.Linear(10, 12), torch.randn(2, 5, 10)),
        "conv": (nn.Conv2d(3, 5, 3, padding=1), torch.randn(2, 3, 8, 8)),
        "conv_strided": (nn.Conv2d(3, 5, 5, stride=2, padding=2), torch.randn(2, 3, 9, 9)),
    }[kind]
    peft_model, ours = _peft_pair(base, rank=4, alpha=6.0, use_rslora=use_rslora)
    ref = peft_model(x)
    assert _max_diff(ours(x), base(x)) > 1e-3
    assert _max_diff(ours(x), ref) <= 1e-6
    peft_model.merge_adapter()
    ours.merge()
    assert _max_diff(ours.base_layer.weight, peft_model.base_model.model[0].base_layer.weight) <= 1e-6
