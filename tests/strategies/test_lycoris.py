"""LoHa and LoKr layers: HF PEFT parity, independent references, exact merge on every conv geometry, counts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.strategies.test_lora_layers import CONV_CASES, _check_merge_roundtrip, _conv, _max_diff
from visionpeft.strategies.loha import LoHaLayer, loha_param_count
from visionpeft.strategies.lokr import LoKrLayer, factorization, lokr_param_count, lokr_shapes


def _randomize(layer, seed: int = 0, std: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in layer.adapter_parameter_names():
            p = getattr(layer, name)
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _make(kind: str, base: nn.Module, rank: int = 2, alpha: float = 3.0):
    if kind == "loha":
        return LoHaLayer(base, rank, alpha)
    return LoKrLayer(base, rank, alpha, decompose_both=kind == "lokr_both")


KINDS = ["loha", "lokr", "lokr_both"]


def _reference_delta(layer) -> torch.Tensor:
    """The update written out entry by entry from the definitions (no matmul/kron of the layer's own)."""
    w = layer.base_layer.weight
    out, inn = w.shape[0], w[0].numel()
    p = {n: getattr(layer, n).detach() for n in layer.adapter_parameter_names()}
    if isinstance(layer, LoHaLayer):
        w1 = torch.einsum("or,ri->oi", p["hada_w1_a"], p["hada_w1_b"])
        w2 = torch.einsum("or,ri->oi", p["hada_w2_a"], p["hada_w2_b"])
        return (layer.scale * w1 * w2).reshape(w.shape)
    w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
    w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"]
    a, c = w1.shape
    b = out // a
    w2 = w2.reshape(b, -1)  # (b, d * kh * kw)
    k = w[0, 0].numel()
    d = w2.shape[1] // k
    delta = torch.zeros(out, inn, dtype=w.dtype)
    for i in range(a):
        for j in range(b):
            for l_ in range(c):
                for m in range(d):
                    delta[i * b + j, (l_ * d + m) * k:(l_ * d + m + 1) * k] = w1[i, l_] * w2[j, m * k:(m + 1) * k]
    return (layer.scale * delta).reshape(w.shape)


@pytest.mark.parametrize("kind", KINDS)
def test_linear_reference_and_merge_float64(kind):
    torch.manual_seed(0)
    layer = _make(kind, nn.Linear(12, 20).double())
    _randomize(layer)
    x = torch.randn(5, 3, 12, dtype=torch.float64)
    assert _max_diff(layer.get_delta_weight(), _reference_delta(layer)) <= 1e-12
    _check_merge_roundtrip(layer, x)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("kind", KINDS)
def test_conv_reference_and_merge_float64(kind, case):
    base = _conv(case)
    layer = _make(kind, base)
    _randomize(layer, seed=1)
    x = torch.randn(2, base.in_channels, 9, 11, dtype=torch.float64)
    delta = _reference_delta(layer)
    assert _max_diff(layer.get_delta_weight(), delta) <= 1e-12
    reference = copy.deepcopy(base)
    with torch.no_grad():
        reference.weight.add_(delta)
    assert _max_diff(layer(x), reference(x)) <= 1e-10
    _check_merge_roundtrip(layer, x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("base", [nn.Linear(16, 24), nn.Conv2d(8, 12, 3, padding=1, groups=2)],
                         ids=["linear", "conv_groups2"])
def test_fresh_adapter_changes_nothing(kind, base):
    torch.manual_seed(0)
    layer = _make(kind, copy.deepcopy(base))
    x = torch.randn(2, 16) if isinstance(base, nn.Linear) else torch.randn(2, 8, 6, 6)
    assert torch.equal(layer(x), layer.base_layer(x))
    assert torch.equal(layer.get_delta_weight(), torch.zeros_like(layer.base_layer.weight))
    # Only one factor starts at zero (PEFT's init), the others are random.
    nonzero = [bool(getattr(layer, n).abs().sum() > 0) for n in layer.adapter_parameter_names()]
    assert nonzero.count(False) == 1 and nonzero.count(True) >= 1


def test_factorization_matches_lycoris_examples():
    assert factorization(256) == (16, 16)
    assert factorization(128) == (8, 16)
    assert factorization(127) == (1, 127)
    assert factorization(128, 4) == (4, 32)
    assert factorization(192) == (12, 16)


def test_golden_parameter_counts():
    # LoHa: four factors, 2 * rank * (out + in').
    lin = LoHaLayer(nn.Linear(16, 32), rank=4, alpha=4.0)
    assert lin.adapter_param_count() == 2 * (32 * 4 + 4 * 16)
    conv = LoHaLayer(nn.Conv2d(8, 12, 3, groups=4), rank=2, alpha=2.0)
    assert conv.adapter_param_count() == 2 * (12 * 2 + 2 * (8 // 4) * 3 * 3)
    # LoKr on a 768 x 192 Linear (a ViT-tiny fc1): out 768 = 24 * 32, in 192 = 12 * 16; rank 8 < 32 / 2, so
    # W2 = W2a (32 x 8) @ W2b (8 x 16) and W1 is a full 24 x 12.
    fc1 = LoKrLayer(nn.Linear(192, 768), rank=8, alpha=8.0)
    assert fc1.adapter_param_count() == 24 * 12 + 32 * 8 + 8 * 16
    both = LoKrLayer(nn.Linear(192, 768), rank=4, alpha=4.0, decompose_both=True)
    assert both.adapter_param_count() == (24 * 4 + 4 * 12) + (32 * 4 + 4 * 16)
    # A 3x3 conv 64 -> 64: 8 x 8 factors; rank 2 < 8 / 2 factorises W2 over (d * kh * kw).
    c64 = LoKrLayer(nn.Conv2d(64, 64, 3), rank=2, alpha=2.0)
    assert lokr_shapes(c64.base_layer, 2) == {"lokr_w1": (8, 8), "lokr_w2_a": (8, 2), "lokr_w2_b": (2, 8 * 3 * 3)}
    assert c64.adapter_param_count() == 8 * 8 + 8 * 2 + 2 * 8 * 3 * 3
    for layer in (lin, conv):
        assert loha_param_count(layer.base_layer, layer.rank) == layer.adapter_param_count()
    for layer, both_ in ((fc1, False), (both, True), (c64, False)):
        assert lokr_param_count(layer.base_layer, layer.rank, both_) == layer.adapter_param_count()
        assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == layer.adapter_param_count()


def _peft_pair(kind: str, base: nn.Module, rank: int, alpha: float):
    peft = pytest.importorskip("peft")
    if kind == "loha":
        cfg = peft.LoHaConfig(r=rank, alpha=alpha, target_modules=["0"])
    else:
        cfg = peft.LoKrConfig(r=rank, alpha=alpha, target_modules=["0"], decompose_both=kind == "lokr_both")
    peft_model = peft.get_peft_model(nn.Sequential(copy.deepcopy(base)), cfg)
    peft_layer = peft_model.base_model.model[0]
    ours = _make(kind, base, rank, alpha)
    _randomize(ours, seed=5)
    theirs = {n.rpartition(".")[0] for n, _ in peft_layer.named_parameters() if ".default" in n}
    assert theirs == set(ours.adapter_parameter_names())  # same factors, same names
    with torch.no_grad():
        for name in ours.adapter_parameter_names():
            getattr(peft_layer, name)["default"].copy_(getattr(ours, name))
    return peft_model.eval(), ours.eval()


PEFT_CASES = {
    "linear": (lambda: nn.Linear(64, 96), (4, 64)),
    "conv": (lambda: nn.Conv2d(16, 24, 3, padding=1), (2, 16, 7, 7)),
    "conv_wide": (lambda: nn.Conv2d(64, 64, 3, padding=1), (1, 64, 5, 5)),
    "conv_strided_groups": (lambda: nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=4), (2, 16, 9, 9)),
    "conv_1x1": (lambda: nn.Conv2d(32, 48, 1), (2, 32, 4, 4)),
}


@pytest.mark.parametrize("case", list(PEFT_CASES))
@pytest.mark.parametrize("kind", KINDS)
def test_matches_hf_peft(kind, case):
    torch.manual_seed(0)
    make, shape = PEFT_CASES[case]
    base, x = make(), torch.randn(*shape)
    peft_model, ours = _peft_pair(kind, base, rank=2, alpha=3.0)
    assert _max_diff(ours(x), base(x)) > 1e-3
    assert _max_diff(ours(x), peft_model(x)) <= 1e-6
    assert _max_diff(ours.get_delta_weight(), peft_model.base_model.model[0].get_delta_weight("default")) <= 1e-6


def test_loha_gradients_match_autograd_of_the_plain_formula():
    """The custom backward (saves only the factors) gives autograd's gradients of (W1a W1b) * (W2a W2b)."""
    torch.manual_seed(0)
    layer = LoHaLayer(nn.Conv2d(4, 6, 3, groups=2).double(), rank=3, alpha=2.0)
    _randomize(layer)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    layer(x).pow(2).sum().backward()
    ours = [getattr(layer, n).grad.clone() for n in layer.adapter_parameter_names()]
    factors = [getattr(layer, n).detach().clone().requires_grad_(True) for n in layer.adapter_parameter_names()]
    delta = (factors[0] @ factors[1]) * (factors[2] @ factors[3]) * layer.scale
    w = layer.base_layer.weight.detach() + delta.reshape(layer.base_layer.weight.shape)
    torch.nn.functional.conv2d(x, w, layer.base_layer.bias.detach(), groups=2).pow(2).sum().backward()
    for g_ours, f in zip(ours, factors):
        assert (g_ours - f.grad).abs().max() <= 1e-10 * max(1.0, f.grad.abs().max().item())
