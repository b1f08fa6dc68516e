"""LoRA strategy: target selection, skip rules, config errors, merging, and a training step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.fixtures import tiny_cnn
from visionpeft.errors import ConfigError, TargetNotFoundError
from visionpeft.spec import ModelSpec
from visionpeft.strategies import registry
from visionpeft.strategies.base import ApplyContext
from visionpeft.strategies.lora import (
    LoRAConfig,
    LoRAConv2d,
    LoRALinear,
    LoRAStrategy,
    lora_layers,
    merge_in_place,
    merge_lora,
    unmerge,
)


class TinyViTBlock(nn.Module):
    """A fused-qkv attention + MLP block, enough to exercise the qkv / q-v rules."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(d, 3 * d)
        self.attn.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.attn.qkv(self.norm(x)).reshape(b, n, 3, d).unbind(2)
        att = torch.softmax(q @ k.transpose(1, 2) / d**0.5, dim=-1)
        x = x + self.attn.proj(att @ v)
        return x + self.mlp(x)


class TinyViT(nn.Module):
    def __init__(self, d: int = 8, depth: int = 3, num_classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.blocks = nn.Sequential(*[TinyViTBlock(d) for _ in range(depth)])
        self.head = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(x)).mean(1))


VIT_SPEC = ModelSpec(head=("head",), blocks=("blocks.0", "blocks.1", "blocks.2"))
CNN_SPEC = ModelSpec(head=("fc",), blocks=("stem", "block", "dw"))



def _apply(model: nn.Module, spec: ModelSpec, ctx: ApplyContext | None = None, **cfg):
    return LoRAStrategy(LoRAConfig(**cfg)).apply(model, ctx or ApplyContext(spec=spec))


def _vit(seed: int = 0) -> TinyViT:
    torch.manual_seed(seed)
    return TinyViT()


def _randomize(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(0.1 * torch.randn(layer.lora_B.shape, generator=g, dtype=layer.lora_B.dtype))


# ---------------------------------------------------------------- selection


def test_default_targets_skip_head_and_expensive_depthwise():
    model = tiny_cnn()
    report = _apply(model, CNN_SPEC, rank=2)
    assert report.modules == ["stem.0", "block.0"]
    assert report.trainable == ["stem.0.lora_A", "stem.0.lora_B", "block.0.lora_A", "block.0.lora_B"]
    assert any("dw.0" in n and "max_param_fraction" in n for n in report.notes)
    assert any(n.startswith("skipped fc") and "head" in n for n in report.notes)
    assert isinstance(model.stem[0], LoRAConv2d) and isinstance(model.dw[0], nn.Conv2d)
    params = dict(model.named_parameters())
    assert all(name in params for name in report.trainable)
    # Golden count: per-group rank r adds r * (in * k * k + out) per conv.
    r = 2
    expected = r * (3 * 3 * 3 + 8) + r * (8 * 3 * 3 + 16)
    assert sum(params[n].numel() for n in report.trainable) == expected


def test_max_param_fraction_none_adapts_depthwise_too():
    model = tiny_cnn()
    report = _apply(model, CNN_SPEC, rank=1, max_param_fraction=None)
    assert report.modules == ["stem.0", "block.0", "dw.0"]
    assert isinstance(model.dw[0], LoRAConv2d)


def test_qkv_qv_splits_fused_projection_and_rank_alpha_patterns():
    model = _vit()
    report = _apply(
        model,
        VIT_SPEC,
        rank=4,
        targets=["qkv", "proj"],
        qkv="qv",
        rank_pattern={"blocks.2.*": 8},
        alpha_pattern={"proj": 2.0},
        max_param_fraction=None,
    )
    assert report.modules == [f"blocks.{i}.attn.{n}" for i in range(3) for n in ("qkv", "proj")]
    qkv0: LoRALinear = model.blocks[0].attn.qkv
    assert qkv0.segments == ((0, 8), (16, 24)) and qkv0.rank == 4 and qkv0.scale == 1.0
    assert model.blocks[2].attn.qkv.rank == 8
    assert model.blocks[0].attn.proj.scale == 2.0 / 4
    assert model.blocks[2].attn.proj.scale == 2.0 / 8
    assert model.blocks[0].attn.proj.segments is None


def test_start_block_and_frozen_region_and_exclude():
    model = _vit()
    ctx = ApplyContext(spec=VIT_SPEC)
    ctx.frozen.add(model.blocks[1].parameters(), "freeze.n=[1]")
    report = _apply(model, VIT_SPEC, ctx, rank=2, start_block=1, exclude=["mlp.2"])
    assert report.modules == ["embed", "blocks.2.attn.qkv", "blocks.2.attn.proj", "blocks.2.mlp.0"]
    notes = "\n".join(report.notes)
    assert "blocks.0.attn.qkv: inside spec.blocks[:start_block] (lora.start_block=1)" in notes
    assert "blocks.1.mlp.0: its weight lies in the frozen region (freeze.n=[1])" in notes
    assert "blocks.2.mlp.2: excluded by lora.exclude pattern 'mlp.2'" in notes


def test_multihead_attention_out_proj_is_skipped():
    model = nn.Sequential(nn.Linear(4, 8), nn.MultiheadAttention(8, 2))
    report = _apply(model, ModelSpec(), targets=["Linear"], max_param_fraction=None)
    assert report.modules == ["0"]
    assert any("1.out_proj" in n and "MultiheadAttention" in n for n in report.notes)


def test_wrapper_carries_framework_tags():
    """Ultralytics reads .f/.i/.type on each top-level layer of a DetectionModel while routing tensors."""
    conv = nn.Conv2d(3, 4, 3, padding=1)
    conv.f, conv.i, conv.type = -1, 0, "Conv2d"
    model = nn.Sequential(conv, nn.ReLU())
    _apply(model, ModelSpec(), rank=1)
    assert isinstance(model[0], LoRAConv2d) and (model[0].f, model[0].i, model[0].type) == (-1, 0, "Conv2d")
    merge_lora(model)
    assert model[0] is conv and conv.f == -1


def test_merge_restores_original_architecture_and_names():
    torch.manual_seed(0)
    model = _vit().double().eval()
    keys = list(model.state_dict())
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    _apply(model, VIT_SPEC, rank=3, qkv="qv", max_param_fraction=None)
    _randomize(model)
    before = model(x)
    n_layers = 1 + 3 * 4  # embed + (qkv, proj, fc1, fc2) per block; the head is excluded
    assert merge_in_place(model) == n_layers and all(m.merged for m in lora_layers(model).values())
    assert (model(x) - before).abs().max() <= 1e-10
    assert unmerge(model) == n_layers
    assert (model(x) - before).abs().max() <= 1e-10
    LoRAStrategy(LoRAConfig()).merge(model)
    assert not lora_layers(model) and list(model.state_dict()) == keys
    assert (model(x) - before).abs().max() <= 1e-10
    assert merge_lora(model) == 0


def test_training_changes_only_lora_tensors():
    model = tiny_cnn().train()
    for p in model.parameters():  # PEFT semantics: visionpeft.apply freezes the base first
        p.requires_grad_(False)
    spec = ModelSpec(blocks=CNN_SPEC.blocks)  # no head: fc gets an adapter too
    report = _apply(model, spec, rank=2, targets=["Conv2d", "fc"], exclude=["dw"])
    assert report.modules == ["stem.0", "block.0", "fc"]
    for m in model.modules():  # frozen BN statistics: eval policy
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(report.trainable)
    opt = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 4, (4,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == set(report.trainable)


# ---------------------------------------------------------------- errors


@pytest.fixture
def lora_only_registry(monkeypatch):
    """The registry restricted to LoRA, so these tests do not depend on the other strategy modules."""
    monkeypatch.setattr(registry, "_BUILTIN", ("visionpeft.strategies.lora.strategy",))


@pytest.mark.parametrize(
    "entry, expected",
    [
        ({"rank": 0}, "strategies.rank: Input should be greater than 0"),
        ({"alpha": -1.0}, "strategies.alpha"),
        ({"dropout": 1.0}, "strategies.dropout"),
        ({"rnak": 4}, "did you mean 'rank'"),
        ({"qkv": "qk"}, "strategies.qkv"),
        ({"rank_pattern": {"qkv": 0}}, "strategies.rank_pattern.qkv"),
        ({"targets": []}, "strategies.targets"),
    ],
)
def test_bad_config_gives_clear_error(lora_only_registry, entry, expected):
    with pytest.raises(ConfigError) as err:
        registry.parse_config({"method": "lora", **entry})
    assert expected in str(err.value)


def test_config_defaults_roundtrip(lora_only_registry):
    cfg = registry.parse_config({"method": "lora", "rank": 4, "targets": ["qkv"]})
    assert isinstance(cfg, LoRAConfig) and cfg.alpha is None and cfg.max_param_fraction == 1.0
    assert LoRAConfig.model_validate(cfg.model_dump()) == cfg


def test_unknown_target_names_closest_modules():
    with pytest.raises(TargetNotFoundError) as err:
        _apply(_vit(), VIT_SPEC, targets=["qvk"])
    assert "lora.targets" in str(err.value) and "blocks.0.attn.qkv" in str(err.value)


def test_target_of_unsupported_type_names_the_type():
    with pytest.raises(ConfigError) as err:
        _apply(_vit(), VIT_SPEC, targets=["norm"])
    assert "LayerNorm" in str(err.value) and "'norm'" in str(err.value)


def test_unknown_exclude_and_rank_pattern_are_errors():
    with pytest.raises(TargetNotFoundError, match="lora.exclude"):
        _apply(_vit(), VIT_SPEC, exclude=["mpl"])
    with pytest.raises(ConfigError, match="lora.rank_pattern.*'blocks.9.*'"):
        _apply(_vit(), VIT_SPEC, rank_pattern={"blocks.9.*": 4})


def test_nothing_left_says_why():
    with pytest.raises(ConfigError) as err:
        _apply(tiny_cnn(), CNN_SPEC, targets=["dw.0"])
    assert "max_param_fraction" in str(err.value) and "1 target layers" in str(err.value)
    model = _vit()
    ctx = ApplyContext(spec=VIT_SPEC)
    ctx.frozen.add(model.blocks.parameters(), "freeze.patterns 'blocks'")
    with pytest.raises(ConfigError, match=r"frozen region \(freeze.patterns 'blocks'\).*freeze fewer"):
        _apply(model, VIT_SPEC, ctx, targets=["qkv"])


def test_default_targets_need_only_match_together():
    """The generic spec's ("Linear", "Conv2d") on a model without convs is fine; user targets are strict."""
    model = _vit()
    report = _apply(model, ModelSpec(), rank=2)
    assert len(report.modules) == 1 + 3 * 4 + 1
    with pytest.raises(TargetNotFoundError, match="no plain nn.Linear"):
        _apply(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)), ModelSpec())
    with pytest.raises(TargetNotFoundError, match="'Conv2d'"):
        _apply(_vit(), ModelSpec(), rank=2, targets=["Linear", "Conv2d"])


def test_start_block_beyond_blocks_is_error():
    with pytest.raises(ConfigError, match="lora.start_block"):
        _apply(_vit(), VIT_SPEC, start_block=4)


def test_second_lora_on_same_layers_is_error():
    model = _vit()
    _apply(model, VIT_SPEC, rank=2, targets=["qkv"])
    with pytest.raises(ConfigError, match="already carry a LoRA adapter"):
        _apply(model, VIT_SPEC, rank=2, targets=["qkv"])


# ---------------------------------------------------------------- through the public API


def test_public_api_freeze_then_lora_then_head_and_adapter_roundtrip(tmp_path):
    import visionpeft

    spec = ModelSpec(head=("fc",), blocks=("stem", "block", "dw"))
    strategies = [
        {"method": "freeze", "n": 1},
        {"method": "lora", "rank": 2, "max_param_fraction": None},
        {"method": "head"},
    ]
    model = tiny_cnn().eval()
    plan = visionpeft.apply(model, strategies, spec=spec)
    assert set(lora_layers(model)) == {"block.0", "dw.0"}  # stem is frozen: no adapter there
    r = 2
    assert plan.by_strategy["lora"] == r * (8 * 3 * 3 + 16) + r * (16 * 3 * 3 + 16)
    assert plan.by_strategy["head"] == 16 * 4 + 4
    _randomize(model)
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    visionpeft.save_adapter(model, tmp_path)
    fresh = tiny_cnn().eval()
    visionpeft.load_adapter(fresh, tmp_path, spec=spec)
    assert torch.equal(fresh(x), expected)
    merged = visionpeft.merge(fresh)
    assert not lora_layers(merged)
    assert (merged(x) - expected).abs().max() <= 1e-5
