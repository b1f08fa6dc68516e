"""Trainability plan: composition rules, golden counts, BatchNorm policies, enforcement."""

from __future__ import annotations

import json

import pytest
import torch

import visionpeft
from visionpeft.api import parse_strategies
from visionpeft.errors import ConfigError, PlanViolationError, TargetNotFoundError

from .fixtures import BLOCK, DW, FC, STEM, TOTAL, tiny_cnn


def _train_steps(model: torch.nn.Module, steps: int = 3) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    model.train()
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        out = model(torch.randn(4, 3, 8, 8, generator=gen))
        out.pow(2).mean().backward()
        opt.step()
        model.train()  # what trainers do every epoch: must not revive frozen BN statistics


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before: dict, model: torch.nn.Module) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


def test_golden_counts_freeze_n() -> None:
    model = tiny_cnn()
    plan = visionpeft.apply(model, [{"method": "freeze", "n": 1}])
    assert plan.total == TOTAL
    assert plan.trainable_count == BLOCK + DW + FC
    assert plan.by_strategy == {"freeze": BLOCK + DW + FC}
    report = visionpeft.parameter_report(model)
    assert report["total"] == TOTAL and report["trainable"] == BLOCK + DW + FC
    assert report["frozen"] == STEM


def test_head_only_and_bitfit_counts() -> None:
    model = tiny_cnn()
    plan = visionpeft.apply(model, [{"method": "head"}, {"method": "bitfit"}])
    # head: fc weight+bias; bitfit: conv biases (stem 8, block 16) + BN biases (8 + 16 + 16); fc.bias owned by head
    assert plan.by_strategy == {"head": FC, "bitfit": 8 + 16 + 8 + 16 + 16}
    assert plan.trainable_count == FC + 8 + 16 + 8 + 16 + 16


def test_norm_counts_and_bn_policy() -> None:
    plan = visionpeft.apply(tiny_cnn(), [{"method": "norm"}])
    assert plan.trainable_count == 2 * (8 + 16 + 16)
    # Tuned affines over a frozen backbone: statistics stay fixed unless asked otherwise.
    assert set(plan.bn_modes.values()) == {"eval"}
    plan = visionpeft.apply(tiny_cnn(), [{"method": "norm", "bn": "train"}])
    assert set(plan.bn_modes.values()) == {"train"}


def test_bitfit_keeps_bn_statistics_fixed() -> None:
    model = tiny_cnn()
    plan = visionpeft.apply(model, [{"method": "bitfit"}, {"method": "head"}])
    before = _snapshot(model)
    _train_steps(model)
    assert _changed(before, model) == set(plan.trainable)


def test_freeze_region_excludes_later_strategies() -> None:
    model = tiny_cnn()
    plan = visionpeft.apply(model, [{"method": "freeze", "n": 2}, {"method": "bitfit"}, {"method": "head"}])
    assert not any(n.startswith(("stem.", "block.")) for n in plan.trainable)
    assert "dw.1.bias" in plan.trainable and plan.trainable["fc.weight"] == "head"


def test_freeze_list_patterns_unfreeze() -> None:
    model = tiny_cnn()
    plan = visionpeft.apply(
        model, [{"method": "freeze", "n": [0, 2], "patterns": ["fc.bias"], "unfreeze": ["stem.1.weight"]}]
    )
    assert "stem.0.weight" not in plan.trainable and "dw.0.weight" not in plan.trainable
    assert "fc.bias" not in plan.trainable and "fc.weight" in plan.trainable
    assert "stem.1.weight" in plan.trainable and "block.0.weight" in plan.trainable


@pytest.mark.parametrize("policy", ["eval", "train", "frozen"])
def test_only_planned_tensors_change(policy: str) -> None:
    model = tiny_cnn()
    plan = visionpeft.apply(model, [{"method": "freeze", "n": 2, "bn": policy}])
    before = _snapshot(model)
    _train_steps(model)
    changed = _changed(before, model)
    bn_stats = {"stem.1", "block.1", "dw.1"}
    expected = {k for k in plan.trainable}
    frozen_bn = {"stem.1", "block.1"}
    if policy == "train":
        expected |= {f"{m}.{b}" for m in bn_stats for b in ("running_mean", "running_var", "num_batches_tracked")}
    elif policy == "eval":
        expected |= {f"dw.1.{b}" for b in ("running_mean", "running_var", "num_batches_tracked")}
    if policy == "frozen":
        expected -= {"dw.1.weight", "dw.1.bias"}
        assert plan.bn_modes == {m: "eval" for m in bn_stats}
    else:
        assert all(plan.bn_modes[m] == ("train" if policy == "train" else "eval") for m in frozen_bn)
    assert changed == expected


def test_enforce_and_check_catch_outside_changes() -> None:
    model = tiny_cnn()
    plan = visionpeft.apply(model, [{"method": "head"}])
    for p in model.parameters():  # what Ultralytics' _setup_train does
        p.requires_grad_(True)
    with pytest.raises(PlanViolationError, match="became trainable"):
        plan.check(model)
    plan.enforce(model)
    plan.check(model)


def test_plan_is_json_and_printable() -> None:
    plan = visionpeft.apply(tiny_cnn(), [{"method": "freeze", "n": 1}, {"method": "head"}])
    data = json.loads(plan.to_json())
    assert data["trainable_count"] == FC and data["strategies"] == ["freeze", "head"]
    assert data["labels"] == ["freeze 1 block", "head"]
    assert "trainable: " in str(plan) and "strategies: freeze 1 block -> head" in str(plan)


@pytest.mark.parametrize(("entry", "label"), [
    ({"method": "freeze", "n": 10}, "freeze 10 blocks"),
    ({"method": "freeze", "n": [0, 3]}, "freeze blocks 0,3"),
    ({"method": "freeze", "patterns": ["a.*", "b"], "bn": "train"}, "freeze 2 patterns bn=train"),
    ({"method": "lora"}, "lora r8"),
    ({"method": "lora", "rank": 4, "alpha": 8, "qkv": "qv"}, "lora r4 a8 qv"),
    ({"method": "lora", "rank": 16, "alpha": 16, "start_block": 2}, "lora r16 from block 2"),
    ({"method": "vpt", "tokens": 1, "mode": "deep"}, "vpt deep 1 token"),
    ({"method": "vpt"}, "vpt shallow 10 tokens"),
    ({"method": "bitfit"}, "bitfit"),
    ({"method": "full"}, "full"),
])
def test_strategy_labels_name_their_settings(entry: dict, label: str) -> None:
    """The plan text, the report and TensorBoard's methods column say 'freeze 10 blocks', 'lora r8'."""
    (config,) = parse_strategies([entry])
    assert config.label() == label


def test_merge_of_plain_strategies_restores_plain_model() -> None:
    model = tiny_cnn()
    visionpeft.apply(model, [{"method": "freeze", "n": 2}])
    visionpeft.merge(model)
    assert visionpeft.get_plan(model) is None
    assert all(p.requires_grad for p in model.parameters())
    assert not any(m._forward_pre_hooks for m in model.modules())
    fresh = tiny_cnn(seed=3)
    fresh.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize(
    ("strategies", "match"),
    [
        ([{"method": "freeze", "n": 9}], r"freeze\.n: n=9 .* 5 blocks"),
        ([{"method": "freeze", "n": [1, 7]}], r"index 7 is past the end"),
        ([{"method": "frezee", "n": 1}], r"did you mean 'freeze'"),
        ([{"method": "freeze", "nn": 1}], r"strategies\.0\.nn: unknown key; did you mean 'n'"),
        ([{"method": "freeze", "n": -1}], r"strategies\.0\.n"),
        ([{"method": "freeze", "bn": "sometimes"}], r"strategies\.0\.bn"),
        ([{"method": "freeze", "patterns": ["stemm.*"]}], r"matches no parameter.*Closest"),
        ([{"method": "head", "modules": ["fcc"]}], r"'fcc' matches no module.*'fc'"),
        ([], r"the list is empty"),
        ([{"rank": 4}], r"'method' key"),
    ],
)
def test_bad_configs_give_clear_errors(strategies: list, match: str) -> None:
    with pytest.raises((ConfigError, TargetNotFoundError), match=match):
        visionpeft.apply(tiny_cnn(), strategies)


def test_apply_twice_is_refused() -> None:
    model = tiny_cnn()
    visionpeft.apply(model, [{"method": "head"}])
    with pytest.raises(ConfigError, match="already adapted"):
        visionpeft.apply(model, [{"method": "head"}])


def test_freeze_n_on_vit_freezes_stem_parameters_of_the_root() -> None:
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=3)
    plan = visionpeft.apply(model, [{"method": "freeze", "n": 2}])  # stem + blocks.0
    frozen = {n for n, _ in model.named_parameters()} - set(plan.trainable)
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight"} <= frozen
    assert all(n.startswith(("patch_embed.", "blocks.0.")) or "." not in n for n in frozen)
    assert "blocks.1.attn.qkv.weight" in plan.trainable and "head.weight" in plan.trainable
