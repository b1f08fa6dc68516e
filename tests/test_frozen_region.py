"""One frozen region: every freeze form is respected by every strategy, on timm and Ultralytics models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import visionpeft
from visionpeft.errors import ConfigError, TargetNotFoundError
from visionpeft.spec import ModelSpec
from visionpeft.strategies.lora import lora_layers

from .fixtures import FC, tiny_cnn


def _vit(depth: int = 3) -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=depth, num_classes=3)


def _yolo() -> nn.Module:
    from visionpeft.backends.ultralytics import build_model

    return build_model("yolov8n.yaml")


def _in(name: str, prefix: str) -> bool:
    return name.startswith(prefix + ".")


# Every way of writing "freeze blocks.0" (with the ViT stem in the n forms: block 0 is patch_embed).
VIT_FREEZE_BLOCK0 = [
    {"method": "freeze", "n": 2},
    {"method": "freeze", "n": [1]},
    {"method": "freeze", "patterns": ["blocks.0"]},
    {"method": "freeze", "patterns": ["blocks.0.*"]},
    {"method": "freeze", "patterns": [r"re:blocks\.0\..*"]},
]


@pytest.mark.parametrize("freeze", VIT_FREEZE_BLOCK0, ids=lambda f: str(f.get("n", f.get("patterns"))))
@pytest.mark.parametrize("method", ["lora", "bitfit", "norm"])
def test_no_strategy_trains_inside_any_freeze_form(freeze: dict, method: str) -> None:
    model = _vit()
    plan = visionpeft.apply(model, [freeze, {"method": method}])
    assert not [n for n in plan.trainable if _in(n, "blocks.0")]
    assert [n for n in plan.trainable if _in(n, "blocks.1")]  # the strategy did act elsewhere
    assert not [n for n in lora_layers(model) if _in(n, "blocks.0")]


def test_issue_example_patterns_then_lora_adds_no_adapter_in_blocks0() -> None:
    model = _vit()
    plan = visionpeft.apply(model, [{"method": "freeze", "patterns": ["blocks.0"]}, {"method": "lora"}])
    assert [n for n in lora_layers(model) if _in(n, "blocks.0")] == []
    assert plan.by_strategy["lora"] == 2 * 8 * sum(  # rank 8 x (in + out) for qkv, proj, fc1, fc2 of 2 blocks
        a + b for a, b in ((192, 576), (192, 192), (192, 768), (768, 192)))


def test_freeze_listed_after_lora_still_defines_the_region() -> None:
    model = _vit()
    visionpeft.apply(model, [{"method": "lora"}, {"method": "freeze", "patterns": ["blocks.0"]}])
    assert not [n for n in lora_layers(model) if _in(n, "blocks.0")]


def test_unfreeze_takes_a_tensor_out_of_the_region() -> None:
    model = _vit()
    strategies = [{"method": "freeze", "n": [1], "unfreeze": ["blocks.0.norm1.weight"]}, {"method": "norm"}]
    plan = visionpeft.apply(model, strategies)
    inside = sorted(n for n in plan.trainable if _in(n, "blocks.0"))
    assert inside == ["blocks.0.norm1.weight"] and plan.trainable[inside[0]] == "freeze"


def test_unfrozen_weight_trains_in_full_so_lora_skips_it() -> None:
    model = _vit()
    strategies = [{"method": "freeze", "n": [1], "unfreeze": ["blocks.0.attn.qkv.weight"]}, {"method": "lora"}]
    plan = visionpeft.apply(model, strategies)
    assert "blocks.0.attn.qkv.weight" in plan.trainable  # LoRA did not wrap (and freeze) it
    assert not [n for n in lora_layers(model) if _in(n, "blocks.0")]


def test_head_in_the_region_is_an_error_naming_the_freeze() -> None:
    spec = ModelSpec(head=("fc",), blocks=("stem", "block", "dw", "fc"))
    with pytest.raises(TargetNotFoundError, match=r"head: nothing to train.*2 by freeze\.n=4"):
        visionpeft.apply(tiny_cnn(), [{"method": "freeze", "n": 4}, {"method": "head"}], spec=spec)
    plan = visionpeft.apply(tiny_cnn(), [{"method": "freeze", "patterns": ["fc.bias"]}, {"method": "head"}])
    assert set(plan.trainable) == {"fc.weight"}


def test_always_frozen_is_part_of_the_region_for_every_strategy() -> None:
    spec = ModelSpec(head=("fc",), blocks=("stem", "block", "dw"), always_frozen=("fc.bias",))
    for strategies in ([{"method": "head"}], [{"method": "bitfit"}], [{"method": "full"}],
                       [{"method": "freeze", "n": 1}]):
        plan = visionpeft.apply(tiny_cnn(), strategies, spec=spec)
        assert "fc.bias" not in plan.trainable, strategies
    with pytest.raises(ConfigError, match=r"unfreeze: pattern 'fc.bias' matches only parameters .* never trains"):
        visionpeft.apply(tiny_cnn(), [{"method": "freeze", "n": 1, "unfreeze": ["fc.bias"]}], spec=spec)


def test_bn_frozen_is_part_of_the_region() -> None:
    with pytest.raises(TargetNotFoundError, match=r"norm: nothing to train.*by freeze\.bn='frozen'"):
        visionpeft.apply(tiny_cnn(), [{"method": "freeze", "bn": "frozen"}, {"method": "norm"}])
    with pytest.raises(ConfigError, match=r"bitfit\.bn: 'train' contradicts freeze\.bn='frozen'"):
        visionpeft.apply(tiny_cnn(), [{"method": "freeze", "n": 1, "bn": "frozen"},
                                      {"method": "bitfit", "bn": "train"}])


def test_claims_survive_lora_wrapping_the_layer() -> None:
    """bitfit before lora: LoRA wraps qkv and froze its base, silently dropping bitfit's qkv bias."""
    model = _vit(depth=2)
    plan = visionpeft.apply(model, [{"method": "bitfit"}, {"method": "lora"}])
    assert plan.trainable["blocks.0.attn.qkv.base_layer.bias"] == "bitfit"
    n_bias = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias"))
    assert plan.by_strategy["bitfit"] == n_bias


def test_lora_does_not_take_over_a_layer_another_strategy_trains() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
    with pytest.raises(ConfigError, match=r"already trains in full \(made trainable by 'head'\)"):
        visionpeft.apply(net, [{"method": "head"}, {"method": "lora", "targets": ["1"], "rank": 1}],
                         spec=ModelSpec(head=("1",)))


# ------------------------------------------------------------------------------------------- VPT


def test_vpt_gives_no_prompts_to_frozen_blocks_and_matches_a_manual_forward() -> None:
    model = _vit(depth=4).eval()
    plan = visionpeft.apply(model, [{"method": "freeze", "n": 3}, {"method": "vpt", "mode": "deep", "tokens": 2}])
    prompts = model.vpt.prompts
    assert prompts.shape == (2, 2, 192) and "vpt.prompts" in plan.trainable  # blocks.2 and blocks.3 only
    assert not model.blocks[0]._forward_pre_hooks and not model.blocks[1]._forward_pre_hooks
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        prompts.normal_()
        t = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        t = model.blocks[1].__class__.forward(model.blocks[1], model.blocks[0].__class__.forward(model.blocks[0], t))
        t = torch.cat([t[:, :1], prompts[0].expand(2, -1, -1), t[:, 1:]], 1)
        t = model.blocks[2].__class__.forward(model.blocks[2], t)
        t = torch.cat([t[:, :1], prompts[1].expand(2, -1, -1), t[:, 3:]], 1)
        t = model.blocks[3].__class__.forward(model.blocks[3], t)
        t = torch.cat([t[:, :1], t[:, 3:]], 1)
        expected = model.forward_head(model.norm(t))
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)


def test_vpt_with_every_block_frozen_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"vpt: all 2 transformer blocks lie in the frozen region.*freeze\.n=3"):
        visionpeft.apply(_vit(depth=2), [{"method": "freeze", "n": 3}, {"method": "vpt"}])


# ----------------------------------------------------------------------------------- Ultralytics


def test_ultralytics_patterns_freeze_blocks_lora_and_dfl() -> None:
    model = _yolo()
    plan = visionpeft.apply(model, [{"method": "freeze", "patterns": ["model.2"]}, {"method": "lora"}])
    assert not [n for n in lora_layers(model) if _in(n, "model.2")]
    assert [n for n in lora_layers(model) if _in(n, "model.3")]
    assert not [n for n in plan.trainable if ".dfl" in n]
    with pytest.raises(ConfigError, match=r"frozen region \(spec\.always_frozen"):
        visionpeft.apply(_yolo(), [{"method": "lora", "targets": ["dfl.conv"]}])


@pytest.mark.parametrize("freeze", [{"n": [2]}, {"patterns": ["model.2"]}, {"patterns": ["re:model\\.2\\..*"]}],
                         ids=["n-list", "prefix", "regex"])
@pytest.mark.parametrize("method", ["bitfit", "norm", "lora", "full"])
def test_ultralytics_every_strategy_respects_every_freeze_form(freeze: dict, method: str) -> None:
    model = _yolo()
    plan = visionpeft.apply(model, [{"method": "freeze", **freeze}, {"method": method}])
    assert not [n for n in plan.trainable if _in(n, "model.2") or ".dfl" in n]
    assert [n for n in plan.trainable if _in(n, "model.3")]


def test_ultralytics_head_leaves_the_frozen_part_of_the_head() -> None:
    plan = visionpeft.apply(_yolo(), [{"method": "freeze", "patterns": ["model.22.cv2"]}, {"method": "head"}])
    assert plan.trainable and all(_in(n, "model.22.cv3") for n in plan.trainable)


def test_ultralytics_freeze_past_the_model_is_an_error_at_apply() -> None:
    """The issue's example: freeze n=23 on yolov8n (23 layers) left 0 trainable parameters."""
    model = _yolo()
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(ConfigError, match=r"nothing would train.*by freeze\.n=23.*spec\.always_frozen"):
        visionpeft.apply(model, [{"method": "freeze", "n": 23}])
    assert [p.requires_grad for p in model.parameters()] == flags and visionpeft.get_plan(model) is None
    with pytest.raises(ConfigError, match=r"freeze\.n: n=24 asks for more blocks"):
        visionpeft.apply(model, [{"method": "freeze", "n": 24}])
    with pytest.raises(TargetNotFoundError, match=r"head: nothing to train.*freeze\.n=23"):
        visionpeft.apply(model, [{"method": "freeze", "n": 23}, {"method": "head"}])
    plan = visionpeft.apply(model, [{"method": "freeze", "n": 22}])
    assert plan.trainable and all(_in(n, "model.22") and ".dfl" not in n for n in plan.trainable)


def test_other_plans_that_train_nothing() -> None:
    with pytest.raises(ConfigError, match=r"nothing would train: all 13 parameter tensors.*freeze\.patterns '\*'"):
        visionpeft.apply(tiny_cnn(), [{"method": "freeze", "patterns": ["*"]}])
    with pytest.raises(TargetNotFoundError, match=r"bitfit: nothing to train.*freeze\.n=\[0, 1, 2, 3\]"):
        visionpeft.apply(tiny_cnn(), [{"method": "freeze", "n": [0, 1, 2, 3]}, {"method": "bitfit"}],
                         spec=ModelSpec(blocks=("stem", "block", "dw", "fc")))


# -------------------------------------------------------------------------------------- messages


def test_lora_head_skip_names_the_head_not_exclude() -> None:
    """The issue's example: nn.Sequential(..., nn.Linear) with targets ['Linear'] blamed lora.exclude."""
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(ConfigError) as err:
        visionpeft.apply(net, [{"method": "lora", "targets": ["2"]}])
    text = str(err.value)
    assert "task head (spec.head)" in text and "'head' strategy" in text
    assert "lora.exclude" not in text and "loosen" not in text
    with pytest.raises(ConfigError) as err:  # the issue's exact shape: the only Linear is the head
        visionpeft.apply(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), [{"method": "lora", "targets": ["Linear"]}])
    assert "task head (spec.head)" in str(err.value) and "lora.exclude" not in str(err.value)
    plan = visionpeft.apply(net, [{"method": "lora", "targets": ["Linear"], "rank": 2}, {"method": "head"}])
    assert plan.trainable["0.lora_A"] == "lora" and plan.trainable["2.weight"] == "head"


@pytest.mark.parametrize(
    ("strategies", "says", "never"),
    [
        ([{"method": "lora", "targets": ["Linear"], "exclude": ["0"]}], "lora.exclude pattern '0'", "start_block"),
        ([{"method": "lora", "targets": ["0"], "start_block": 1}], "lora.start_block=1", "exclude"),
        ([{"method": "freeze", "n": 1}, {"method": "lora", "targets": ["0"]}], "freeze.n=1", "exclude"),
        ([{"method": "lora", "targets": ["0"], "rank": 64}], "max_param_fraction=1.0", "exclude"),
    ],
)
def test_each_lora_skip_reason_names_what_was_written(strategies: list, says: str, never: str) -> None:
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(ConfigError) as err:
        visionpeft.apply(net, strategies)
    assert says in str(err.value) and never not in str(err.value)


def test_backend_exclusion_is_not_blamed_on_the_user() -> None:
    with pytest.raises(ConfigError) as err:
        visionpeft.apply(_yolo(), [{"method": "lora", "targets": ["model.0.conv"]}])
    text = str(err.value)
    assert "spec.lora_exclude pattern" in text and "loosen lora.exclude" not in text


def test_region_counts_match_the_plan() -> None:
    plan = visionpeft.apply(tiny_cnn(), [{"method": "freeze", "n": 3}, {"method": "head"}])
    assert plan.trainable_count == FC
