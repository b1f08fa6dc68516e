"""DoRA, LoHa, LoKr and SSF on real architectures (timm ViT / ResNet / EfficientNet-Lite, Ultralytics YOLO11n).

Float64, adapters initialised non-trivially: the adapted model must differ from the base, and after
``visionpeft.merge`` it must be the original architecture (same state-dict keys, strict load into an unadapted
copy) computing the adapted model's output.
"""

from __future__ import annotations

import copy

import pytest
import torch

import visionpeft
from tests.strategies.test_lora_models import MODELS, _max_diff, _run
from visionpeft.strategies.adapter_layer import WeightAdapterLayer
from visionpeft.strategies.ssf import SSFLayer

TOL = 1e-10


def _perturb(model: torch.nn.Module, plan) -> None:
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in plan.trainable:
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _check_merges_exactly(name: str, strategies: list[dict], spec=None) -> visionpeft.TrainabilityPlan:
    build, size = MODELS[name]
    torch.manual_seed(0)
    model = build().double().eval()
    original = copy.deepcopy(model)
    keys = list(model.state_dict())
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    base_out = _run(model, x)
    plan = visionpeft.apply(model, strategies, spec=spec)
    assert _max_diff(_run(model, x), base_out) <= 1e-12, "a fresh adapter must change nothing"
    _perturb(model, plan)
    before = _run(model, x)
    assert _max_diff(before, base_out) > 1e-4, "adapters must change the output for the test to mean anything"
    merged = visionpeft.merge(model)
    assert not any(isinstance(m, WeightAdapterLayer | SSFLayer) for m in merged.modules())
    assert list(merged.state_dict()) == keys
    assert _max_diff(_run(merged, x), before) <= TOL
    original.load_state_dict(merged.state_dict(), strict=True)
    assert _max_diff(_run(original, x), before) <= TOL
    return plan


@pytest.mark.parametrize("name", ["vit_tiny", "resnet18", "efficientnet_lite0", "yolo11n"])
def test_ssf_with_backend_defaults_folds_into_the_original_architecture(name):
    plan = _check_merges_exactly(name, [{"method": "ssf"}])
    owners = {n.rsplit(".", 1)[0] for n in plan.trainable}
    if name == "vit_tiny":  # the paper's placement: attention/MLP linears and both block norms
        assert {"blocks.0.attn.qkv", "blocks.0.mlp.fc2", "blocks.0.norm1", "blocks.11.norm2", "norm"} <= owners
    else:  # CNNs / YOLO: every BatchNorm (BatchNormAct2d in EfficientNet, Conv.bn in YOLO) outside the head
        fresh = dict(MODELS[name][0]().named_modules())
        bns = {n for n, m in fresh.items() if isinstance(m, torch.nn.BatchNorm2d)}
        if name == "yolo11n":  # the stem (model.0) and the Detect head (model.23) are left out, as for LoRA
            bns = {n for n in bns if not n.startswith(("model.0.", "model.23."))}
        assert owners == bns


@pytest.mark.parametrize("method", ["dora", "loha", "lokr"])
@pytest.mark.parametrize("name", ["vit_tiny", "efficientnet_lite0", "yolo11n"])
def test_weight_methods_everywhere_merge_exactly(method, name):
    """Every Linear/Conv2d (depthwise included) adapted through the generic spec."""
    extra = {"max_param_fraction": None, "rank": 2}
    plan = _check_merges_exactly(name, [{"method": method, **extra}], spec=visionpeft.ModelSpec())
    assert set(plan.by_strategy) == {method}


def test_dora_qv_on_timm_vit_merges_exactly():
    _check_merges_exactly(
        "vit_tiny", [{"method": "dora", "rank": 2, "targets": ["qkv"], "qkv": "qv"}], spec=visionpeft.ModelSpec()
    )
