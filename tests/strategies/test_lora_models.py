"""LoRA on real architectures (timm ViT / ResNet / EfficientNet-Lite, Ultralytics YOLO11n), in float64.

Every Linear/Conv2d gets an adapter (depthwise included), adapters are non-zero, and the model must
compute the same before merge, after merge, after unmerge, and after merging into plain weights that
strict-load into an unadapted copy of the architecture.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

import visionpeft
from visionpeft.strategies.lora import LoRAConv2d, LoRALayer, LoRALinear, lora_layers, merge_in_place, unmerge

TOL = 1e-10



def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        timm = pytest.importorskip("timm")
        return timm.create_model(name, pretrained=False, num_classes=5, **kwargs)

    return build


def _yolo11n() -> nn.Module:
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    return tasks.DetectionModel("yolo11n.yaml", nc=3, verbose=False)


MODELS = {
    "vit_tiny": (_timm("vit_tiny_patch16_224", img_size=32), 32),
    "resnet18": (_timm("resnet18"), 32),
    "efficientnet_lite0": (_timm("efficientnet_lite0"), 32),
    "yolo11n": (_yolo11n, 64),
}


def _tensors(out: object) -> list[torch.Tensor]:
    """Every tensor of a (nested) model output: Ultralytics returns a tuple with a dict of lists."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _tensors(out[k])]
    if isinstance(out, list | tuple):
        return [t for o in out for t in _tensors(o)]
    return []


@torch.no_grad()
def _run(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return [t.clone() for t in _tensors(model(x))]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b) and a
    return max((u - v).abs().max().item() for u, v in zip(a, b))


@pytest.mark.parametrize("name", list(MODELS))
def test_lora_everywhere_merges_exactly(name):
    build, size = MODELS[name]
    torch.manual_seed(0)
    model = build().double().eval()
    original = copy.deepcopy(model)  # an unadapted model of the same architecture
    keys = list(model.state_dict())
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    base_out = _run(model, x)

    cfg = {"method": "lora", "rank": 2, "max_param_fraction": None}
    plan = visionpeft.apply(model, [cfg], spec=visionpeft.ModelSpec())
    layers = lora_layers(model)
    n_targets = sum(type(m) in (nn.Linear, nn.Conv2d) for m in original.modules())
    assert len(layers) == n_targets  # every Linear/Conv2d, depthwise included
    if name in ("efficientnet_lite0", "yolo11n"):
        assert any(isinstance(m, LoRAConv2d) and m.base_layer.groups > 1 for m in layers.values())
    assert set(plan.trainable) == {f"{n}.lora_{ab}" for n in layers for ab in "AB"}
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.copy_(0.1 * torch.randn(layer.lora_B.shape, generator=g, dtype=torch.float64))

    before = _run(model, x)
    assert _max_diff(before, base_out) > 1e-3, "adapters must change the output for the test to mean anything"
    merge_in_place(model)
    assert _max_diff(_run(model, x), before) <= TOL
    unmerge(model)
    assert _max_diff(_run(model, x), before) <= TOL

    merged = visionpeft.merge(model)
    assert not any(isinstance(m, LoRALayer) for m in merged.modules())
    assert list(merged.state_dict()) == keys
    assert _max_diff(_run(merged, x), before) <= TOL
    assert _max_diff(_run(original, x), before) > 1e-3
    original.load_state_dict(merged.state_dict(), strict=True)
    assert _max_diff(_run(original, x), before) <= TOL


def test_vit_qkv_qv_on_timm_attention():
    build, size = MODELS["vit_tiny"]
    torch.manual_seed(0)
    model = build().double().eval()
    d = model.embed_dim
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    visionpeft.apply(
        model, [{"method": "lora", "rank": 4, "targets": ["qkv"], "qkv": "qv"}], spec=visionpeft.ModelSpec()
    )
    qkv = model.blocks[0].attn.qkv
    assert isinstance(qkv, LoRALinear) and qkv.segments == ((0, d), (2 * d, 3 * d))
    # Golden count: per block two segments, each A = rank x d, plus B = rank x (2 d rows).
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == len(model.blocks) * (2 * 4 * d + 2 * d * 4)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.1)
    before = _run(model, x)
    merge_in_place(model)
    assert _max_diff(_run(model, x), before) <= TOL
