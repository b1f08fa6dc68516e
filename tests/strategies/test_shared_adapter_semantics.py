"""What every wrapping method shares with LoRA (strategies/targets.py, adapter_layer.py): the one frozen region,
claims, skip reasons that name what the user wrote, validation before anything changes, to_base restoring the
caller's trainability, and the plain-layer view (``weight``/``bias``/geometry) that makes Conv+BN fusion exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import visionpeft
from tests.fixtures import tiny_cnn
from tests.strategies.test_lora_layers import CONV_CASES, _rebuild_fuse
from visionpeft.errors import ConfigError, VisionPeftError
from visionpeft.snapshot import mergeable_layers
from visionpeft.spec import ModelSpec
from visionpeft.strategies import registry
from visionpeft.strategies.base import ApplyContext
from visionpeft.strategies.dora import DoRAConv2d, DoRALinear
from visionpeft.strategies.loha import LoHaLayer
from visionpeft.strategies.lokr import LoKrLayer
from visionpeft.strategies.ssf import SSFLayer

CNN_SPEC = ModelSpec(head=("fc",), blocks=("stem", "block", "dw"))
WRAPPING = [{"method": "lora", "rank": 2}, {"method": "dora", "rank": 2}, {"method": "loha", "rank": 2},
            {"method": "lokr", "rank": 2}, {"method": "ssf"}]
_ids = {"ids": lambda e: e["method"]}


def _randomize(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.startswith("base_layer."):
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


# ---------------------------------------------------------------- the frozen region, claims, skip reasons


@pytest.mark.parametrize("entry", WRAPPING, **_ids)
def test_every_freeze_form_keeps_adapters_out(entry: dict) -> None:
    """``patterns`` and ``n`` land in one region that every wrapping method reads; the note names the field."""
    for freeze, cause in (({"method": "freeze", "patterns": ["stem"]}, "freeze.patterns"),
                          ({"method": "freeze", "n": 1}, "freeze.n=1")):
        model = tiny_cnn()
        plan = visionpeft.apply(model, [freeze, entry], spec=CNN_SPEC)
        wrapped = {n for n, m in model.named_modules() if m in mergeable_layers(model)}
        assert wrapped and not any(n.startswith("stem") for n in wrapped)
        assert not any(n.startswith("stem") for n in plan.trainable)
        with pytest.raises(ConfigError, match=rf"{entry['method']}: all 1 target layers were skipped.*"
                                              rf"frozen region \({cause}.*freeze fewer"):
            visionpeft.apply(tiny_cnn(), [freeze, {**entry, "targets": ["stem.0"]}], spec=CNN_SPEC)


@pytest.mark.parametrize("entry", WRAPPING, **_ids)
def test_a_claimed_layer_is_not_frozen_by_a_later_wrapper(entry: dict) -> None:
    """``head`` trains fc in full; a wrapper named onto fc would freeze it: skipped, naming the owner."""
    model = tiny_cnn()
    with pytest.raises(ConfigError, match=r"made trainable by 'head'.*'head' already trains them in full"):
        visionpeft.apply(model, [{"method": "head"}, {**entry, "targets": ["fc"]}], spec=CNN_SPEC)
    assert not mergeable_layers(model)


def test_ssf_leaves_norm_layers_that_norm_trains() -> None:
    model = tiny_cnn()
    plan = visionpeft.apply(model, [{"method": "norm"}, {"method": "ssf"}], spec=CNN_SPEC)
    assert plan.trainable["stem.1.weight"] == "norm" and plan.trainable["stem.0.ssf_scale"] == "ssf"
    assert not isinstance(model.stem[1], SSFLayer) and isinstance(model.stem[0], SSFLayer)


@pytest.mark.parametrize("entry", WRAPPING, **_ids)
def test_skip_reasons_name_what_the_user_wrote(entry: dict) -> None:
    m = entry["method"]
    with pytest.raises(ConfigError) as err:  # the shape: the only Linear is the head, not an exclude
        visionpeft.apply(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), [{**entry, "targets": ["Linear"]}])
    assert "task head (spec.head)" in str(err.value) and f"{m}.exclude" not in str(err.value)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(ConfigError) as err:
        visionpeft.apply(net, [{**entry, "targets": ["0"], "exclude": ["0"]}])
    assert f"{m}.exclude pattern '0'" in str(err.value) and f"loosen {m}.exclude (pattern '0')" in str(err.value)
    with pytest.raises(ConfigError) as err:
        visionpeft.apply(tiny_cnn(), [{**entry, "targets": ["stem.0"], "start_block": 1}], spec=CNN_SPEC)
    assert f"{m}.start_block=1" in str(err.value) and "exclude" not in str(err.value)


# ---------------------------------------------------------------- validation before anything changes


@pytest.mark.parametrize(
    ("entry", "says"),
    [({"method": "dora", "exclude": ["nope"]}, "dora.exclude"), ({"method": "loha", "rank_pattern": {"nope": 2}},
     "loha.rank_pattern"), ({"method": "lokr", "targets": ["nope"]}, "lokr.targets"),
     ({"method": "ssf", "start_block": 9}, "ssf.start_block"), ({"method": "ssf", "targets": ["dw.0"]}, "ssf.targets"),
     ({"method": "adaptformer", "targets": ["stem"]}, "no nn.Linear"),
     ({"method": "adaptformer", "targets": ["fc"], "start_block": 9}, "adaptformer.start_block")],
)
def test_check_refuses_before_changing_the_model(entry: dict, says: str) -> None:
    model = tiny_cnn()
    before = {n: id(m) for n, m in model.named_modules()}
    strategy = registry.build([registry.parse_config(entry)])[0]
    with pytest.raises(VisionPeftError, match=says):
        strategy.check(model, ApplyContext(spec=CNN_SPEC))
    assert {n: id(m) for n, m in model.named_modules()} == before
    with pytest.raises(VisionPeftError, match=rf"strategies\.1: .*{says}"):
        visionpeft.apply(model, [{"method": "lora", "rank": 1}, entry], spec=CNN_SPEC)
    assert {n: id(m) for n, m in model.named_modules()} == before


# ---------------------------------------------------------------- layers read and fold like the plain layer


LAYERS = {
    "dora": lambda base: (DoRALinear if isinstance(base, nn.Linear) else DoRAConv2d)(base, rank=2, alpha=3.0),
    "loha": lambda base: LoHaLayer(base, rank=2, alpha=3.0),
    "lokr": lambda base: LoKrLayer(base, rank=2, alpha=3.0),
}


@pytest.mark.parametrize("method", list(LAYERS) + ["ssf"])
def test_to_base_restores_the_callers_trainability(method: str) -> None:
    base = nn.Linear(4, 4)
    base.bias.requires_grad_(False)
    layer = SSFLayer(base) if method == "ssf" else LAYERS[method](base)
    assert not base.weight.requires_grad
    plain = layer.to_base()
    assert plain is base and plain.weight.requires_grad and not plain.bias.requires_grad


@pytest.mark.parametrize("method", list(LAYERS))
def test_geometry_and_effective_weight(method: str) -> None:
    lin = LAYERS[method](nn.Linear(5, 3).double())
    conv = LAYERS[method](nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2).double())
    assert (lin.in_features, lin.out_features) == (5, 3) and not hasattr(lin, "kernel_size")
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.groups) == (4, 6, (3, 3),
                                                                                                  (2, 2), 2)
    for layer in (lin, conv):
        _randomize(layer, seed=1)
        merged = copy.deepcopy(layer).to_base()
        assert torch.equal(layer.weight, merged.weight) and not torch.equal(layer.weight, layer.base_layer.weight)
        assert layer.bias is layer.base_layer.bias and not layer.weight.requires_grad


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", ["plain", "groups2", "depthwise_mult", "reflect", "same_even_replicate",
                                  "valid_1x1_nobias"])
@pytest.mark.parametrize("method", list(LAYERS))
def test_conv_bn_fusion_folds_every_weight_adapter_exactly(method: str, case: str) -> None:
    """Both fusion styles (assign back, rebuild from geometry) equal merge-then-fuse bit for bit (float64)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    torch.manual_seed(0)
    layer = LAYERS[method](nn.Conv2d(**CONV_CASES[case]).double())
    _randomize(layer, seed=3)
    bn = _random_bn(layer.out_channels)
    x = torch.randn(2, layer.in_channels, 9, 11, dtype=torch.float64)
    merged = copy.deepcopy(layer).to_base().eval()
    with torch.no_grad():
        assert (bn(merged(x)) - bn(layer.base_layer(x))).abs().max() > 1e-3  # the update matters
        for fuse in (fuse_conv_bn_eval, _rebuild_fuse):
            reference = fuse(copy.deepcopy(merged), bn)
            fused = fuse(copy.deepcopy(layer).eval(), bn)
            assert torch.equal(fused.weight, reference.weight) and torch.equal(fused.bias, reference.bias)
    folded = fuse_conv_bn_eval(copy.deepcopy(layer).eval(), bn)
    assert type(folded) is type(layer) and folded.folded and folded.merged
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn(merged(x)), rtol=1e-10, atol=1e-10)
    with pytest.raises(RuntimeError, match="cannot be taken out again"):
        folded.unmerge()


def _random_bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels).double().eval()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64))
        bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=g, dtype=torch.float64))
    return bn


def test_ssf_wrapped_batchnorm_fuses_exactly() -> None:
    """Ultralytics fuses ``Conv.conv`` with ``Conv.bn``; SSF wraps the BN: its weight/bias/statistics are read."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False).double().eval()
    ssf = SSFLayer(_random_bn(6)).eval()
    _randomize(ssf, seed=5)
    assert torch.equal(ssf.running_var, ssf.base_layer.running_var) and ssf.eps == ssf.base_layer.eps
    reference = fuse_conv_bn_eval(copy.deepcopy(conv), copy.deepcopy(ssf).to_base())
    fused = fuse_conv_bn_eval(copy.deepcopy(conv), ssf)
    assert torch.equal(fused.weight, reference.weight) and torch.equal(fused.bias, reference.bias)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        assert (ssf(conv(x)) - ssf.base_layer(conv(x))).abs().max() > 1e-3
        torch.testing.assert_close(fused(x), ssf(conv(x)), rtol=1e-10, atol=1e-10)
    plain = SSFLayer(nn.Linear(4, 3).double())  # assigning folds scale and shift in for good
    _randomize(plain, seed=6)
    want_bias = plain.bias.clone()
    plain.weight = nn.Parameter(torch.zeros(3, 4, dtype=torch.float64))
    assert plain.folded and plain.merged and torch.equal(plain.bias, want_bias)
    with pytest.raises(RuntimeError, match="cannot be taken out again"):
        plain.unmerge()
