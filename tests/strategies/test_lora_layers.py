"""LoRA layers: exact merge/unmerge, independent references, init, parameter counts, dtypes, HF PEFT parity."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from visionpeft.strategies.lora.layers import LoRAConv2d, LoRALayer, LoRALinear, adapter_param_count

TOL = 1e-10



def _randomize(layer: LoRALayer, seed: int = 0) -> None:
    """Non-zero adapters, so that a merge that does nothing (or twice) cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g, dtype=layer.lora_A.dtype))
        layer.lora_B.copy_(0.1 * torch.randn(layer.lora_B.shape, generator=g, dtype=layer.lora_B.dtype))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _check_merge_roundtrip(layer: LoRALayer, x: torch.Tensor) -> None:
    """before merge == after merge == after unmerge == to_base(), and the adapter changes the output."""
    base_out = layer.base_layer(x)
    w0 = layer.base_layer.weight.detach().clone()
    before = layer(x)
    assert _max_diff(before, base_out) > 1e-3, "adapter is a no-op: the test would prove nothing"
    layer.merge()
    assert layer.merged
    assert _max_diff(layer.base_layer.weight, w0) > 1e-4
    after_merge = layer(x)
    layer.merge()  # a second merge must not add the update twice
    assert _max_diff(layer(x), before) <= TOL
    layer.unmerge()
    assert not layer.merged
    after_unmerge = layer(x)
    assert _max_diff(layer.base_layer.weight, w0) <= 1e-14
    assert _max_diff(after_merge, before) <= TOL
    assert _max_diff(after_unmerge, before) <= TOL
    plain = copy.deepcopy(layer).to_base()
    assert type(plain) in (nn.Linear, nn.Conv2d)
    assert _max_diff(plain(x), before) <= TOL


# ---------------------------------------------------------------- Linear


def test_linear_merge_roundtrip_float64():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(12, 20).double(), rank=4, alpha=8.0)
    _randomize(layer)
    _check_merge_roundtrip(layer, torch.randn(5, 3, 12, dtype=torch.float64))


def test_linear_delta_matches_independent_reference():
    torch.manual_seed(0)
    base = nn.Linear(6, 10).double()
    layer = LoRALinear(base, rank=3, alpha=5.0)
    _randomize(layer)
    x = torch.randn(4, 6, dtype=torch.float64)
    scale = 5.0 / 3
    w, b = base.weight.detach(), base.bias.detach()
    expected = x @ (w + scale * layer.lora_B.detach() @ layer.lora_A.detach()).T + b
    assert _max_diff(layer(x), expected) <= TOL


def test_qkv_qv_segments_merge_and_leave_k_untouched():
    torch.manual_seed(0)
    d = 8
    base = nn.Linear(d, 3 * d).double()
    layer = LoRALinear(base, rank=2, alpha=2.0, segments=[(0, d), (2 * d, 3 * d)])
    _randomize(layer)
    x = torch.randn(7, d, dtype=torch.float64)
    out, ref = layer(x), base(x)
    # k rows are not adapted at all; q and v rows are.
    assert torch.equal(out[:, d : 2 * d], ref[:, d : 2 * d])
    assert _max_diff(out[:, :d], ref[:, :d]) > 1e-3
    assert _max_diff(out[:, 2 * d :], ref[:, 2 * d :]) > 1e-3
    # Independent reference: each segment's own B_s @ A_s, zero in the k block.
    a, b = layer.lora_A.detach(), layer.lora_B.detach()
    delta = torch.zeros(3 * d, d, dtype=torch.float64)
    delta[:d] = b[:d] @ a[:2]
    delta[2 * d :] = b[d:] @ a[2:]
    assert _max_diff(layer.get_delta_weight(), delta) <= TOL
    _check_merge_roundtrip(layer, x)


@pytest.mark.parametrize("segments", [[(0, 5), (4, 8)], [(3, 1)], [(0, 30)], []])
def test_bad_segments_rejected(segments):
    with pytest.raises(ValueError, match="segments"):
        LoRALinear(nn.Linear(4, 12), rank=2, alpha=2.0, segments=segments)


# ---------------------------------------------------------------- Conv2d

CONV_CASES = {
    "plain": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    "groups2": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2),
    "depthwise": dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6),
    "depthwise_mult": dict(in_channels=4, out_channels=8, kernel_size=5, padding=2, groups=4),
    "dilation2": dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, dilation=2),
    "stride2": dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),
    "reflect": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="reflect"),
    "replicate_rect": dict(in_channels=4, out_channels=6, kernel_size=(3, 5), padding=(1, 2), padding_mode="replicate"),
    "circular_groups": dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=2, padding_mode="circular"),
    "same_even_kernel": dict(in_channels=4, out_channels=6, kernel_size=4, padding="same"),
    "same_dilated_reflect": dict(
        in_channels=4, out_channels=6, kernel_size=3, padding="same", dilation=2, padding_mode="reflect"
    ),
    "same_even_replicate": dict(
        in_channels=4, out_channels=6, kernel_size=(4, 2), padding="same", padding_mode="replicate"
    ),
    "same_depthwise": dict(in_channels=6, out_channels=6, kernel_size=4, padding="same", groups=6),
    "valid_1x1_nobias": dict(in_channels=4, out_channels=6, kernel_size=1, padding="valid", bias=False),
}


def _conv(case: str, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(**CONV_CASES[case]).double()


def _reference_delta(layer: LoRAConv2d) -> torch.Tensor:
    """Per-group ``scale * B_j @ A_j`` with a plain loop, independent of the layer's own bmm."""
    base = layer.base_layer
    g, r = base.groups, layer.rank
    og = base.out_channels // g
    a, b = layer.lora_A.detach(), layer.lora_B.detach()
    blocks = []
    for j in range(g):
        a_j = a[j * r : (j + 1) * r].reshape(r, -1)  # (r, in/g * kh * kw)
        b_j = b[j * og : (j + 1) * og, :, 0, 0]  # (out/g, r)
        blocks.append((b_j @ a_j).reshape(og, *base.weight.shape[1:]))
    return layer.scale * torch.cat(blocks)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_merge_roundtrip_float64(case):
    layer = LoRAConv2d(_conv(case), rank=2, alpha=3.0)
    _randomize(layer, seed=1)
    _check_merge_roundtrip(layer, torch.randn(2, layer.base_layer.in_channels, 9, 11, dtype=torch.float64))


def _rebuild_fuse(conv, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Conv+BN fusion that builds a new conv from the old one's geometry (Ultralytics < 8.4's fuse_conv_and_bn)."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                      padding_mode=conv.padding_mode).to(conv.weight.dtype)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.bias)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_bn_fusion_folds_the_update_exactly(case):
    """Fusion code written for nn.Conv2d reads the effective weight and may assign the fused tensors back
    (torch's fuse_conv_bn_eval, Ultralytics 8.4) or rebuild a conv from the geometry (older Ultralytics):
    both give exactly what merge-then-fuse gives, and an assigned weight folds the update in for good."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    layer = LoRAConv2d(_conv(case), rank=2, alpha=3.0)
    _randomize(layer, seed=3)
    bn = nn.BatchNorm2d(layer.out_channels).double().eval()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64))
        bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=g, dtype=torch.float64))
    x = torch.randn(2, layer.in_channels, 9, 11, dtype=torch.float64)
    merged = copy.deepcopy(layer).to_base().eval()
    assert _max_diff(layer.weight, merged.weight) == 0 and layer.bias is layer.base_layer.bias
    with torch.no_grad():
        want = bn(merged(x))
        assert _max_diff(want, bn(layer.base_layer(x))) > 1e-3  # the update matters
        for fuse in (fuse_conv_bn_eval, _rebuild_fuse):
            reference = fuse(copy.deepcopy(merged), bn)
            fused = fuse(copy.deepcopy(layer).eval(), bn)
            assert _max_diff(fused.weight, reference.weight) == 0 and _max_diff(fused.bias, reference.bias) == 0
            assert _max_diff(fused(x), want) <= TOL
    folded = fuse_conv_bn_eval(copy.deepcopy(layer).eval(), bn)
    assert isinstance(folded, LoRAConv2d) and folded.folded and folded.merged
    folded.merge()  # no-op: the update is already inside
    with torch.no_grad():
        assert _max_diff(folded(x), want) <= TOL
    with pytest.raises(RuntimeError, match="cannot be taken out again"):
        folded.unmerge()
    with pytest.raises(ValueError, match="must keep the shape"):
        folded.weight = nn.Parameter(torch.zeros(1, dtype=torch.float64))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_matches_conv_with_reference_merged_weight(case):
    """Unmerged forward == nn.Conv2d's own forward with W + (per-group matmul delta)."""
    base = _conv(case)
    layer = LoRAConv2d(base, rank=3, alpha=2.0)
    _randomize(layer, seed=2)
    x = torch.randn(2, base.in_channels, 10, 7, dtype=torch.float64)
    delta = _reference_delta(layer)
    assert _max_diff(layer.get_delta_weight(), delta) <= TOL
    reference = copy.deepcopy(base)
    with torch.no_grad():
        reference.weight.add_(delta)
    assert _max_diff(layer(x), reference(x)) <= TOL


def test_conv_reference_with_plain_functional_conv():
    """Same as above for a grouped, strided, dilated conv, written out with F.conv2d only."""
    torch.manual_seed(0)
    base = nn.Conv2d(6, 9, 3, stride=2, padding=2, dilation=2, groups=3).double()
    layer = LoRAConv2d(base, rank=2, alpha=4.0)
    _randomize(layer, seed=3)
    x = torch.randn(1, 6, 13, 12, dtype=torch.float64)
    w = base.weight.detach() + _reference_delta(layer)
    expected = F.conv2d(x, w, base.bias.detach(), stride=2, padding=2, dilation=2, groups=3)
    assert _max_diff(layer(x), expected) <= TOL


# ---------------------------------------------------------------- init, counts, dtypes


@pytest.mark.parametrize(
    "make",
    [
        lambda: LoRALinear(nn.Linear(8, 5), 4, 4.0),
        *[
            (lambda c=c: LoRAConv2d(nn.Conv2d(**CONV_CASES[c]), 2, 2.0))
            for c in ("groups2", "reflect", "same_depthwise")
        ],
    ],
)
def test_fresh_adapter_changes_nothing(make):
    torch.manual_seed(0)
    layer = make()
    assert layer.lora_A.abs().sum() > 0  # A is random, B is zero: the product is exactly zero
    x = torch.randn(2, 8) if isinstance(layer, LoRALinear) else torch.randn(2, layer.base_layer.in_channels, 6, 6)
    assert torch.equal(layer(x), layer.base_layer(x))
    assert torch.equal(layer.get_delta_weight(), torch.zeros_like(layer.base_layer.weight))


def test_golden_parameter_counts():
    lin = LoRALinear(nn.Linear(16, 32), rank=4, alpha=4.0)
    assert lin.adapter_param_count() == 4 * 16 + 32 * 4
    qkv = LoRALinear(nn.Linear(8, 24), rank=2, alpha=2.0, segments=[(0, 8), (16, 24)])
    assert qkv.adapter_param_count() == 2 * (2 * 8) + (8 + 8) * 2
    # Grouped conv, rank per group: A = (rank * g) x (in / g) x k x k, B = out x rank.
    conv = LoRAConv2d(nn.Conv2d(8, 12, 3, groups=4), rank=2, alpha=2.0)
    assert conv.adapter_param_count() == (2 * 4) * (8 // 4) * 3 * 3 + 12 * 2
    dw = LoRAConv2d(nn.Conv2d(16, 16, 3, groups=16), rank=1, alpha=1.0)
    assert dw.adapter_param_count() == (1 * 16) * 1 * 3 * 3 + 16 * 1
    assert dw.adapter_param_count() > dw.base_layer.weight.numel()  # 160 > 144: why the skip rule exists
    for layer, segs in ((lin, None), (qkv, [(0, 8), (16, 24)]), (conv, None), (dw, None)):
        assert adapter_param_count(layer.base_layer, layer.rank, segs) == layer.adapter_param_count()
    trainable = sum(p.numel() for p in conv.parameters() if p.requires_grad)
    assert trainable == conv.adapter_param_count()


def test_scaling_and_rslora():
    assert LoRALinear(nn.Linear(4, 4), rank=16, alpha=8.0).scale == 8.0 / 16
    assert LoRALinear(nn.Linear(4, 4), rank=16, alpha=8.0, use_rslora=True).scale == 8.0 / math.sqrt(16)


def test_half_base_keeps_float32_adapter_and_output_dtype():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 6).to(torch.bfloat16), rank=2, alpha=2.0)
    assert layer.lora_A.dtype == torch.float32 and layer.lora_B.dtype == torch.float32
    _randomize(layer)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    ref = layer.base_layer(x).float() + layer.scale * (x.float() @ layer.lora_A.T @ layer.lora_B.T)
    assert _max_diff(out.float(), ref) < 0.05
    layer.merge()
    assert layer.base_layer.weight.dtype == torch.bfloat16
    assert _max_diff(layer(x).float(), ref) < 0.1


def test_autocast_leaves_adapter_float32_and_grads_flow():
    torch.manual_seed(0)
    layer = LoRAConv2d(nn.Conv2d(3, 4, 3, padding=1), rank=2, alpha=2.0)
    _randomize(layer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(2, 3, 5, 5))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert layer.lora_A.dtype == torch.float32 and layer.lora_A.grad.dtype == torch.float32
    assert layer.lora_B.grad.abs().sum() > 0
    assert layer.base_layer.weight.grad is None


def test_dropout_only_on_lora_path():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 6), rank=2, alpha=2.0, dropout=0.9).train()
    x = torch.randn(64, 8)
    assert torch.equal(layer(x), layer.base_layer(x))  # B = 0: a dropped base path would differ
    _randomize(layer)
    train_out = layer(x)
    layer.eval()
    eval_out = layer(x)
    assert _max_diff(train_out, eval_out) > 1e-3  # dropout is active on the LoRA input in train mode
    layer.merge()
    assert _max_diff(layer(x), eval_out) < 1e-5


def test_to_base_restores_original_trainability():
    base = nn.Linear(4, 4)
    base.bias.requires_grad_(False)
    layer = LoRALinear(base, rank=2, alpha=2.0)
    assert not base.weight.requires_grad
    plain = layer.to_base()
    assert plain is base and plain.weight.requires_grad and not plain.bias.requires_grad


@pytest.mark.parametrize(
    "kwargs, field", [(dict(rank=0), "rank"), (dict(alpha=-1.0), "alpha"), (dict(dropout=1.0), "dropout")]
)
def test_layer_rejects_bad_hyperparameters(kwargs, field):
    args = dict(rank=2, alpha=2.0, dropout=0.0) | kwargs
    with pytest.raises(ValueError, match=field):
        LoRALinear(nn.Linear(4, 4), **args)


# ---------------------------------------------------------------- HF PEFT parity


def _peft_pair(base: nn.Module, rank: int, alpha: float, use_rslora: bool):
    peft = pytest.importorskip("peft")
    model = nn.Sequential(copy.deepcopy(base))
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=["0"], use_rslora=use_rslora)
    peft_model = peft.get_peft_model(model, cfg)
    peft_layer = peft_model.base_model.model[0]
    ours = (
        LoRALinear(base, rank, alpha, use_rslora=use_rslora)
        if isinstance(base, nn.Linear)
        else (LoRAConv2d(base, rank, alpha, use_rslora=use_rslora))
    )
    _randomize(ours, seed=5)
    with torch.no_grad():
        peft_layer.lora_A["default"].weight.copy_(ours.lora_A)
        peft_layer.lora_B["default"].weight.copy_(ours.lora_B)
    return peft_model.eval(), ours.eval()


@pytest.mark.parametrize("use_rslora", [False, True])
@pytest.mark.parametrize("kind", ["linear", "conv", "conv_strided"])
def test_matches_hf_peft(kind, use_rslora):
    torch.manual_seed(0)
    if kind == "linear":
        base, x = nn.Linear(10, 12), torch.randn(4, 10)
    elif kind == "conv":
        base, x = nn.Conv2d(3, 5, 3, padding=1), torch.randn(2, 3, 8, 8)
    else:
        base, x = nn.Conv2d(3, 5, 5, stride=2, padding=2), torch.randn(2, 3, 9, 9)
    peft_model, ours = _peft_pair(base, rank=4, alpha=6.0, use_rslora=use_rslora)
    ref = peft_model(x)
    assert _max_diff(ours(x), base(x)) > 1e-3
    # float32: within rounding (thin convs run in weight space, PEFT in activation space: another summation
    # order); float64: the same function to 1e-12.
    assert _max_diff(ours(x), ref) <= 1e-6 * max(1.0, float(ref.abs().max()))
    assert _max_diff(ours.double()(x.double()), peft_model.double()(x.double())) <= 1e-12
    ours.float(), peft_model.float()
    assert _max_diff(ours.get_delta_weight(), peft_model.base_model.model[0].get_delta_weight("default")) <= 1e-6
