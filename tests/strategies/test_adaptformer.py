"""AdaptFormer: parallel bottleneck beside each MLP, its math, counts, merge refusal, unloading and timm ViTs."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import visionpeft
import visionpeft.strategies.adaptformer
from tests.strategies.test_lora_strategy import TinyViT
from visionpeft.errors import ConfigError
from visionpeft.spec import ModelSpec
from visionpeft.strategies.adaptformer import AdaptFormerAdapter, adaptformer_param_count, remove
from visionpeft.strategies.base import ApplyContext

VIT_SPEC = ModelSpec(head=("head",), blocks=("blocks.0", "blocks.1", "blocks.2"),
                     mlp_modules=("blocks.0.mlp", "blocks.1.mlp", "blocks.2.mlp"))


def _vit(seed: int = 0) -> TinyViT:
    torch.manual_seed(seed)
    return TinyViT().double().eval()


def _randomize(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AdaptFormerAdapter):
                for p in m.parameters():
                    p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_adds_scaled_bottleneck_beside_each_mlp():
    model = _vit()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    base = copy.deepcopy(model)
    plan = visionpeft.apply(model, [{"method": "adaptformer", "bottleneck": 4, "scale": 0.5}], spec=VIT_SPEC)
    assert torch.equal(model(x), base(x))  # up = 0: a fresh adapter adds nothing
    _randomize(model)
    # Independent reference: the block written out with the adapter on the MLP's input.
    block, ref_block = model.blocks[0], base.blocks[0]
    h = torch.randn(2, 5, 8, dtype=torch.float64)
    a = model.adaptformer["blocks__0__mlp"]
    expected_mlp = ref_block.mlp(h) + 0.5 * (torch.relu(h @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias)
    assert (block.mlp(h) - expected_mlp).abs().max() <= 1e-12
    # Golden count: per block down (8 x 4 + 4) and up (4 x 8 + 8).
    assert plan.by_strategy == {"adaptformer": 3 * (8 * 4 + 4 + 4 * 8 + 8)}
    assert adaptformer_param_count(8, 8, 4) == 8 * 4 + 4 + 4 * 8 + 8
    assert "adaptformer.blocks__0__mlp.down.weight" in plan.trainable
    assert "blocks.0.mlp.0.weight" in dict(model.named_parameters())  # base names unchanged


def test_learnable_scale_trains_and_start_block_skips_early_blocks():
    model = _vit()
    plan = visionpeft.apply(
        model, [{"method": "adaptformer", "bottleneck": 2, "learnable_scale": True, "start_block": 1}], spec=VIT_SPEC
    )
    assert plan.by_strategy == {"adaptformer": 2 * (8 * 2 + 2 + 2 * 8 + 8 + 1)}
    assert "adaptformer.blocks__1__mlp.scale" in plan.trainable
    assert set(model.adaptformer) == {"blocks__1__mlp", "blocks__2__mlp"}


def test_merge_refuses_clearly_and_leaves_the_model_intact():
    model = _vit()
    visionpeft.apply(model, [{"method": "adaptformer", "bottleneck": 2}, {"method": "head"}], spec=VIT_SPEC)
    _randomize(model)
    x = torch.randn(1, 5, 4, dtype=torch.float64)
    before = model(x)
    with pytest.raises(ConfigError, match="adaptformer: the adapters cannot be folded.*save_adapter"):
        visionpeft.merge(model)
    assert torch.equal(model(x), before) and visionpeft.get_plan(model) is not None


def test_survives_deepcopy_and_pickle_and_unloads():
    model = _vit()
    base = copy.deepcopy(model)
    visionpeft.apply(model, [{"method": "adaptformer", "bottleneck": 2}], spec=VIT_SPEC)
    _randomize(model)
    x = torch.randn(1, 5, 4, dtype=torch.float64)
    expected = model(x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(clone(x), expected)
        with torch.no_grad():  # the copy's hooks use the copy's adapters
            clone.adaptformer["blocks__0__mlp"].up.bias.add_(1.0)
        assert not torch.equal(clone(x), expected) and torch.equal(model(x), expected)
    assert remove(model) and not remove(model)
    assert torch.equal(model(x), base(x))


def test_clear_errors_for_models_without_mlps_and_repeats():
    with pytest.raises(ConfigError, match="adaptformer needs transformer blocks with an MLP"):
        visionpeft.apply(nn.Sequential(nn.Linear(3, 3)), [{"method": "adaptformer"}])
    with pytest.raises(visionpeft.errors.TargetNotFoundError, match="adaptformer.targets"):
        visionpeft.apply(_vit(), [{"method": "adaptformer", "targets": ["blocks.*.mpl"]}], spec=VIT_SPEC)
    model = _vit()
    visionpeft.strategies.adaptformer.AdaptFormerStrategy(
        visionpeft.strategies.adaptformer.AdaptFormerConfig()).apply(model, ApplyContext(spec=VIT_SPEC))
    with pytest.raises(ConfigError, match="list adaptformer once"):
        visionpeft.strategies.adaptformer.AdaptFormerStrategy(
            visionpeft.strategies.adaptformer.AdaptFormerConfig()).apply(model, ApplyContext(spec=VIT_SPEC))
    with pytest.raises(ConfigError, match="bottleneck"):
        visionpeft.apply(_vit(), [{"method": "adaptformer", "bottleneck": 0}], spec=VIT_SPEC)


def test_timm_vit_default_targets_are_every_block_mlp():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32).eval()
    x = torch.randn(1, 3, 32, 32)
    before = model(x)
    plan = visionpeft.apply(model, [{"method": "adaptformer", "bottleneck": 8}, {"method": "head"}])
    d, depth = model.embed_dim, len(model.blocks)
    assert plan.by_strategy["adaptformer"] == depth * (d * 8 + 8 + 8 * d + d)
    assert torch.equal(model(x), before)
