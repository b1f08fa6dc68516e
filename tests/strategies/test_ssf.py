"""SSF: exact folding into Linear / Conv2d / norm layers, default targets, skip rules, counts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.fixtures import tiny_cnn
from visionpeft.errors import ConfigError
from visionpeft.spec import ModelSpec
from visionpeft.strategies.base import ApplyContext
from visionpeft.strategies.ssf import SSFConfig, SSFLayer, SSFStrategy, ssf_param_count

CNN_SPEC = ModelSpec(head=("fc",), blocks=("stem", "block", "dw"))


def _randomize(layer: SSFLayer, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dt = layer.ssf_scale.dtype
        layer.ssf_scale.copy_(1 + 0.3 * torch.randn(layer.ssf_scale.shape, generator=g, dtype=dt))
        layer.ssf_shift.copy_(0.3 * torch.randn(layer.ssf_shift.shape, generator=g, dtype=dt))


def _bn(train_stats: bool) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    return bn.train(train_stats)


LAYERS = {
    "linear": (lambda: nn.Linear(5, 6), (3, 4, 5), -1),
    "conv": (lambda: nn.Conv2d(3, 6, 3, padding=1, groups=3), (2, 3, 5, 5), 1),
    "bn_eval": (lambda: _bn(False), (2, 6, 4, 4), 1),
    "layernorm": (lambda: nn.LayerNorm(6), (2, 3, 6), -1),
    "groupnorm": (lambda: nn.GroupNorm(2, 6), (2, 6, 4, 4), 1),
}


@pytest.mark.parametrize("kind", list(LAYERS))
def test_layer_is_scale_shift_after_op_and_folds_exactly(kind):
    make, shape, dim = LAYERS[kind]
    torch.manual_seed(0)
    base = make().double()
    x = torch.randn(*shape, dtype=torch.float64)
    layer = SSFLayer(copy.deepcopy(base))
    assert torch.equal(layer(x), base(x))  # identity init
    _randomize(layer)
    view = [1] * len(shape)
    view[dim] = -1
    s, t = layer.ssf_scale.detach().view(view), layer.ssf_shift.detach().view(view)
    expected = base(x) * s + t  # the definition, independent of the layer's own folding
    out = layer(x)
    assert (out - expected).abs().max() <= 1e-12
    layer.merge()
    assert (layer(x) - expected).abs().max() <= 1e-12
    layer.unmerge()
    assert torch.equal(layer.base_layer.weight, base.weight) and torch.equal(layer.base_layer.bias, base.bias)
    plain = copy.deepcopy(layer).to_base()
    assert type(plain) is type(base)
    assert (plain(x) - expected).abs().max() <= 1e-12


def test_batchnorm_in_train_mode_folds_exactly_and_keeps_updating_statistics():
    torch.manual_seed(0)
    base = _bn(True).double()
    layer = SSFLayer(copy.deepcopy(base))
    _randomize(layer)
    x = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    s, t = layer.ssf_scale.detach().view(1, -1, 1, 1), layer.ssf_shift.detach().view(1, -1, 1, 1)
    assert (layer(x) - (base(x) * s + t)).abs().max() <= 1e-12
    assert torch.allclose(layer.base_layer.running_mean, base.running_mean)  # statistics still follow the data
    assert not torch.equal(layer.base_layer.running_mean, _bn(False).running_mean)


def test_batchnorm_act_scale_shift_sits_before_the_activation():
    """timm's BatchNormAct2d (BN + ReLU in one module): SSF acts on the affine, i.e. before the ReLU."""
    timm_layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    base = timm_layers.BatchNormAct2d(6, act_layer=nn.ReLU).double().eval()
    with torch.no_grad():
        base.running_var.uniform_(0.5, 2)
        base.bias.normal_()
    layer = SSFLayer(copy.deepcopy(base))
    _randomize(layer)
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    bn = nn.functional.batch_norm(x, base.running_mean, base.running_var, base.weight, base.bias, False, 0.0,
                                  base.eps)
    expected = torch.relu(bn * layer.ssf_scale.detach().view(1, -1, 1, 1) + layer.ssf_shift.detach().view(1, -1, 1, 1))
    assert (layer(x) - expected).abs().max() <= 1e-12
    assert (copy.deepcopy(layer).to_base()(x) - expected).abs().max() <= 1e-12


def test_paper_init_is_near_identity_but_not_identity():
    torch.manual_seed(0)
    layer = SSFLayer(nn.Linear(4, 64), init="paper")
    assert 0 < (layer.ssf_scale - 1).abs().max() < 0.2 and 0 < layer.ssf_shift.abs().max() < 0.2


def test_default_targets_on_a_cnn_skip_bias_free_conv_and_head():
    model = tiny_cnn()
    report = SSFStrategy(SSFConfig()).apply(model, ApplyContext(spec=CNN_SPEC))
    assert report.modules == ["stem.0", "stem.1", "block.0", "block.1", "dw.1"]
    notes = "\n".join(report.notes)
    assert "dw.0: Conv2d without a bias" in notes and "skipped fc: task head" in notes
    # Golden count: scale + shift per output channel of each adapted layer.
    params = dict(model.named_parameters())
    assert sum(params[n].numel() for n in report.trainable) == 2 * (8 + 8 + 16 + 16 + 16)
    assert ssf_param_count(model.stem[0].base_layer) == 2 * 8


def test_explicit_targets_errors_are_clear():
    with pytest.raises(ConfigError, match=r"ssf.targets: pattern 'dw.0' matches only modules of type \['Conv2d'\]"):
        SSFStrategy(SSFConfig(targets=["dw.0"])).apply(tiny_cnn(), ApplyContext(spec=CNN_SPEC))
    model = tiny_cnn()
    SSFStrategy(SSFConfig(targets=["stem.1"])).apply(model, ApplyContext(spec=CNN_SPEC))
    with pytest.raises(ConfigError, match="already carry a SSF adapter"):
        SSFStrategy(SSFConfig(targets=["stem.1"])).apply(model, ApplyContext(spec=CNN_SPEC))
    frozen_stem, ctx = tiny_cnn(), ApplyContext(spec=CNN_SPEC)
    ctx.frozen.add(frozen_stem.stem.parameters(), "freeze.n=1")
    with pytest.raises(ConfigError, match=r"all 1 target layers were skipped.*frozen region \(freeze\.n=1\)"):
        SSFStrategy(SSFConfig(targets=["stem.0"])).apply(frozen_stem, ctx)
