"""ModelSpec roles and the strategy defaults derived from them (visionpeft.strategies.roles).

* every model the tests use gets exactly the defaults the backends used to set field by field (literal values
  written out below), now derived from the roles;
* timm's own ``group_matcher()`` gives ``blocks`` and ``stem``, equal to the structural grouping where both
  exist (RegNet is the documented difference);
* a strategy registered here, whose defaults come only from roles, works on a timm ViT, a timm CNN and an
  Ultralytics model without any backend edit.
"""

from __future__ import annotations

import dataclasses
import pickle
from typing import Literal

import pytest
import torch
from torch import nn

import visionpeft
from tests.fixtures import tiny_cnn
from visionpeft.backends import generic_spec, spec_for
from visionpeft.backends.timm import _block_groups, _structural_groups, build_model, timm_spec
from visionpeft.matching import match_modules, name_matches
from visionpeft.spec import ModelSpec, TokenSpec
from visionpeft.strategies import registry, roles
from visionpeft.strategies.base import ApplyContext, ApplyReport, Strategy, StrategyConfig

VIT_LINEARS = ("blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2")
SSF_VIT = (*VIT_LINEARS, "blocks.*.norm1", "blocks.*.norm2", "patch_embed.proj", "norm")
NORMS = ("_NormBase", "LayerNorm", "GroupNorm")
ULTRA_TARGETS = (r"re:model\.\d+\.(?:.*\.)?conv",)


def _ultra_exclude(last: int) -> tuple[str, ...]:
    return (r"re:model\.0(?:\..*)?", rf"re:model\.{last}\.(?:one2one_)?cv[234]\.\d+\.2(?:\..*)?",
            rf"re:model\.{last}\.dfl(?:\..*)?")


def _vit(**kw):
    return build_model("vit_tiny_patch16_224", 3, img_size=32, patch_size=8, depth=3, **kw)


def _mlps(n: int) -> tuple[str, ...]:
    return tuple(f"blocks.{i}.mlp" for i in range(n))


# name -> (builder, stem, lora_targets, lora_exclude, ssf_targets, mlp_modules): the values the backends set
# field by field before the roles existed (vit_reg4's ssf_targets then also listed "norm", which matched
# only Identity modules there: SSF adapted the same layers, checked below).
TIMM_CASES = {
    "vit_tiny": (_vit, ("patch_embed", "cls_token", "pos_embed"), VIT_LINEARS, ("head",), SSF_VIT, _mlps(3)),
    "vit_reg4_avg": (lambda: _vit(class_token=False, global_pool="avg", reg_tokens=4),
                     ("patch_embed", "reg_token", "pos_embed"), VIT_LINEARS, ("head", "fc_norm"), SSF_VIT[:-1],
                     _mlps(3)),
    "deit_tiny": (lambda: build_model("deit_tiny_patch16_224", 3, img_size=32, depth=2),
                  ("patch_embed", "cls_token", "pos_embed"), VIT_LINEARS, ("head",), SSF_VIT, _mlps(2)),
    "deit_tiny_distilled": (lambda: build_model("deit_tiny_distilled_patch16_224", 3, img_size=32, depth=2),
                            ("patch_embed", "cls_token", "pos_embed", "dist_token"), VIT_LINEARS,
                            ("head", "head_dist"), SSF_VIT, _mlps(2)),
    "resnet18": (lambda: build_model("resnet18", 5), ("conv1", "bn1"), ("Conv2d",), ("re:conv1", "fc"), NORMS, ()),
    "tf_efficientnet_lite0": (lambda: build_model("tf_efficientnet_lite0", 4), ("conv_stem", "bn1"), ("Conv2d",),
                              ("conv_stem", "classifier"), NORMS, ()),
    "convnext_atto": (lambda: build_model("convnext_atto", 2), ("stem",), ("Conv2d",),
                      ("stem.0", "head.fc", "head.norm"), NORMS, ()),
}


def _roles_only(spec: ModelSpec) -> ModelSpec:
    """The spec as the backend makes it before the derived values are filled in: roles, no overrides."""
    return dataclasses.replace(spec, lora_targets=None, lora_exclude=None, ssf_targets=None, mlp_modules=None)


@pytest.mark.parametrize("case", sorted(TIMM_CASES))
def test_timm_defaults_derived_from_roles_are_the_former_literal_values(case):
    build, stem, targets, exclude, ssf, mlps = TIMM_CASES[case]
    model = build()
    spec = timm_spec(model)
    bare = _roles_only(spec)
    assert spec.stem == stem
    assert roles.adapter_targets(model, bare) == targets == spec.lora_targets
    assert roles.adapter_exclude(model, bare) == exclude == spec.lora_exclude
    assert roles.ssf_targets(model, bare) == ssf == spec.ssf_targets
    assert roles.mlp_modules(model, bare) == mlps == spec.mlp_modules


def test_vit_with_identity_final_norm_adapts_the_same_ssf_layers_as_the_former_placement():
    model = _vit(class_token=False, global_pool="avg", reg_tokens=4)
    spec = timm_spec(model)
    former = dataclasses.replace(spec, ssf_targets=SSF_VIT)  # "norm" matched only Identity modules here
    layers = {}
    for name, s in (("derived", spec), ("former", former)):
        m = _vit(class_token=False, global_pool="avg", reg_tokens=4)
        visionpeft.apply(m, [{"method": "ssf"}], spec=s)
        layers[name] = sorted(n for n, mod in m.named_modules() if type(mod).__name__ == "SSFLayer")
    assert layers["derived"] == layers["former"] and len(layers["derived"]) == 3 * 6 + 1


def test_generic_and_bare_specs_keep_the_broad_defaults():
    model = tiny_cnn()
    spec = generic_spec(model)
    assert (spec.stem, spec.tokens, spec.head) == ((), None, ("fc",))
    assert spec.lora_targets == ("Linear", "Conv2d") and spec.lora_exclude == ("fc",)
    assert spec.ssf_targets == ("Linear", "Conv2d", *NORMS) and spec.mlp_modules == ()
    hand_made = ModelSpec(head=("fc",), blocks=("stem", "block", "dw"))  # the tests' hand-made spec
    assert roles.adapter_targets(model, hand_made) == ("Linear", "Conv2d")
    assert roles.adapter_exclude(model, hand_made) == ()  # its head is left out of default targets only
    assert roles.ssf_targets(model, hand_made) == ("Linear", "Conv2d", *NORMS)
    assert roles.mlp_modules(model, hand_made) == () and roles.token_role(hand_made) is None


ULTRA_CASES = [("yolov8n.yaml", "detect"), ("yolov8n-seg.yaml", "segment"), ("yolov8n-pose.yaml", "pose"),
               ("yolov8n-obb.yaml", "obb"), ("yolov8n-cls.yaml", "classify"), ("yolo11n.yaml", "detect"),
               ("rtdetr-l.yaml", "detect")]


@pytest.mark.parametrize("cfg,task", ULTRA_CASES)
def test_ultralytics_roles_and_overrides_are_the_former_values(cfg, task):
    pytest.importorskip("ultralytics")
    from visionpeft.backends.ultralytics import build_model as ultra_build

    model = ultra_build(cfg, nc=3, task=task)
    spec = spec_for(model)
    last = len(model.model) - 1
    assert spec.stem == ("model.0",) and spec.tokens is None and spec.blocks[0] == "model.0"
    targets = ULTRA_TARGETS
    if cfg.startswith("rtdetr"):
        targets = (*ULTRA_TARGETS, rf"re:model\.{last}\.decoder\.layers\.\d+\.(?:cross_attn\.(?:sampling_offsets|"
                                   r"attention_weights|value_proj|output_proj)|linear[12])")
    assert roles.adapter_targets(model, spec) == targets == spec.lora_targets
    assert roles.adapter_exclude(model, spec) == _ultra_exclude(last)
    assert roles.ssf_targets(model, spec) == ("BatchNorm2d",)
    assert roles.mlp_modules(model, spec) == ()


# --------------------------------------------------------------------------------- timm's grouping
def _vit_map():
    return _vit(global_pool="map")


GROUPING_MODELS = {
    "vit_tiny": _vit,
    "vit_reg4_avg": lambda: _vit(class_token=False, global_pool="avg", reg_tokens=4),
    "vit_map_pool": _vit_map,  # attn_pool: left unmatched by timm, joins `norm` as before
    "vit_pre_norm": lambda: _vit(pre_norm=True),  # norm_pre: in timm's stem group
    "deit_tiny": lambda: build_model("deit_tiny_patch16_224", 3, img_size=32, depth=2),
    "deit_tiny_distilled": lambda: build_model("deit_tiny_distilled_patch16_224", 3, img_size=32, depth=2),
    "resnet18": lambda: build_model("resnet18", 2),
    "efficientnet_lite0": lambda: build_model("efficientnet_lite0", 2),
    "convnext_atto": lambda: build_model("convnext_atto", 2),
    "mobilenetv3_small_050": lambda: build_model("mobilenetv3_small_050", 2),  # conv_head: unmatched by timm
}


@pytest.mark.parametrize("case", sorted(GROUPING_MODELS))
def test_timm_matcher_grouping_equals_the_structural_one(case):
    model = GROUPING_MODELS[case]()
    assert callable(getattr(model, "group_matcher", None))
    spec = timm_spec(model)
    head = list(spec.extra["head_modules"])
    structural = _structural_groups(model, head)
    assert spec.blocks == tuple(g[0] for g in structural)
    assert spec.extra["block_members"] == {g[0]: g for g in structural}
    assert spec.stem == structural[0]  # timm's "stem" group is the first block
    _assert_covers_every_parameter_once(model, spec)


def _assert_covers_every_parameter_once(model: nn.Module, spec: ModelSpec) -> None:
    owners = [m for g in spec.extra["block_members"].values() for m in g] + list(spec.extra["head_modules"])
    for name, _ in model.named_parameters():
        assert sum(name == o or name.startswith(o + ".") for o in owners) == 1, name


def test_regnet_blocks_are_timms_stages():
    """The documented difference: RegNet's stages are plain modules, which the structural grouping took for
    loose layers (one block holding the whole backbone); timm's grouping gives stem, s1 ... s4."""
    model = build_model("regnetx_002", 2)
    spec = timm_spec(model)
    assert spec.blocks == ("stem", "s1", "s2", "s3", "s4") and spec.stem == ("stem",)
    assert _structural_groups(model, list(spec.extra["head_modules"])) == [("stem", "s1", "s2", "s3", "s4")]
    _assert_covers_every_parameter_once(model, spec)
    plan = visionpeft.apply(model, [{"method": "freeze", "n": 2}])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith(("stem.", "s1."))}
    assert plan.trainable


@pytest.mark.parametrize("name,blocks,stem", [
    # DenseNet: timm's stem is conv0 + norm0 and each transition joins its dense block; the module tree made
    # every child of `features` a block (norm0 and each transition alone).
    ("densenet121", ("features.conv0", *(f"features.denseblock{i}" for i in range(1, 5)), "features.norm5"),
     ("features.conv0", "features.norm0")),
    # ResNet-D: the deep stem `conv1` is a Sequential, which the module tree took for a stage apart from bn1.
    ("resnet50d", ("conv1", "layer1", "layer2", "layer3", "layer4"), ("conv1", "bn1")),
])
def test_where_timm_groups_differently_its_grouping_is_used(name, blocks, stem):
    model = build_model(name, 2)
    spec = timm_spec(model)
    assert spec.blocks == blocks and spec.stem == stem
    assert [g[0] for g in _structural_groups(model, list(spec.extra["head_modules"]))] != list(blocks)
    _assert_covers_every_parameter_once(model, spec)


def test_a_head_nested_in_a_container_stays_out_of_the_blocks():
    """EfficientViT's classifier layers sit inside `head.classifier` beside the pretrained `head.in_conv`."""
    model = build_model("efficientvit_b0", 2)
    spec = timm_spec(model)
    assert spec.head == ("head.classifier.4", "head.classifier.0", "head.classifier.1")
    assert spec.blocks == ("stem", "stages.0", "stages.1", "stages.2", "stages.3", "head.in_conv")
    _assert_covers_every_parameter_once(model, spec)


def test_freeze_n_keeps_its_meaning_on_a_vit():
    """N = 1 + k freezes the stem (patch embedding and its tokens) and the first k transformer blocks."""
    model = _vit()
    visionpeft.apply(model, [{"method": "freeze", "n": 1 + 2}])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters()
                      if n.startswith(("patch_embed.", "blocks.0.", "blocks.1.")) or n in ("cls_token", "pos_embed")}


def test_model_without_a_matcher_falls_back_to_the_structure(monkeypatch):
    model = build_model("resnet18", 2)

    def no_matcher(coarse: bool = False):
        raise NotImplementedError

    monkeypatch.setattr(model, "group_matcher", no_matcher)
    groups, stem = _block_groups(model, ["fc"])
    assert [g[0] for g in groups] == ["conv1", "layer1", "layer2", "layer3", "layer4"] and stem == ("conv1", "bn1")


def test_old_pickles_with_the_prompt_field_load():
    model = _vit()
    spec = timm_spec(model)
    assert spec.tokens == TokenSpec(("blocks.0", "blocks.1", "blocks.2"), 192, 1, 8)
    state = {k: v for k, v in pickle.loads(pickle.dumps(spec)).__dict__.items() if k not in ("stem", "tokens")}
    old = ModelSpec.__new__(ModelSpec)
    old.__setstate__({**state, "prompt": spec.tokens})  # how a spec pickled before the roles comes back
    assert old.tokens == spec.tokens and old.stem == () and not hasattr(old, "prompt")


def test_a_spec_pickled_under_the_former_names_loads_through_the_restricted_unpickler():
    """Ultralytics run checkpoints pickle the spec; one written before the roles names ``PromptSpec`` and
    stores the token role as ``prompt``. The allow-list (``safe_load.visionpeft_globals``) still accepts it."""
    import io

    from visionpeft.backends.safe_load import visionpeft_globals

    spec = ModelSpec(name="old", blocks=("blocks.0",), tokens=TokenSpec(("blocks.0",), 8, 1, 4))
    buf = io.BytesIO()
    torch.save({"spec": spec}, buf, _use_new_zipfile_serialization=False, pickle_protocol=2)
    raw = buf.getvalue()
    old = raw.replace(b"visionpeft.spec\nTokenSpec\n", b"visionpeft.spec\nPromptSpec\n")
    old = old.replace(b"X\x06\x00\x00\x00tokens", b"X\x06\x00\x00\x00prompt")
    assert old.count(b"PromptSpec") == 1 and b"X\x06\x00\x00\x00tokens" not in old
    torch.serialization.add_safe_globals(visionpeft_globals())
    loaded = torch.load(io.BytesIO(old), weights_only=True)["spec"]
    assert loaded.tokens == spec.tokens and loaded == spec


# ------------------------------------------------------------------- a new method, no backend edit
class RoleScaleConfig(StrategyConfig):
    """Train the stem and a per-channel output scale on every default adapter target (test-only method)."""

    method: Literal["role_scale"] = "role_scale"


class RoleScale(Strategy):
    """Its defaults come only from roles: ``spec.stem`` and :func:`roles.adapter_targets` /
    :func:`roles.adapter_exclude`."""

    method = "role_scale"
    config_cls = RoleScaleConfig

    def apply(self, model: nn.Module, ctx: ApplyContext) -> ApplyReport:
        exclude = roles.adapter_exclude(model, ctx.spec)
        found = match_modules(model, list(roles.adapter_targets(model, ctx.spec)), what="module", field="t")
        trainable = []
        for name, module in found.items():
            out = module.out_features if isinstance(module, nn.Linear) else getattr(module, "out_channels", None)
            left_out = any(name_matches(name, p) or name.startswith(p + ".") for p in (*exclude, *ctx.spec.head))
            if out is None or left_out:
                continue
            module.register_parameter("role_scale", nn.Parameter(torch.full((out,), 1.5)))
            module.register_forward_hook(_scale_output)
            trainable.append(f"{name}.role_scale")
        stem = [n for n, p in model.named_parameters() if any(n == s or n.startswith(s + ".") for s in ctx.spec.stem)]
        for n, p in model.named_parameters():
            if n in stem or n in trainable:
                p.requires_grad_(True)
        return ApplyReport(trainable=[*stem, *trainable])


def _scale_output(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    shape = (1, -1) + (1,) * (out.dim() - 2) if isinstance(module, nn.Conv2d) else (-1,)
    return out * module.role_scale.view(shape)


@pytest.fixture
def role_scale():
    registry.register(RoleScale)
    yield
    registry._REGISTRY.pop(RoleScale.method, None)


def _yolo():
    pytest.importorskip("ultralytics")
    from visionpeft.backends.ultralytics import build_model as ultra_build

    return ultra_build("yolov8n.yaml", nc=2)


@pytest.mark.parametrize("build,stem_prefix,n_scaled", [
    (_vit, ("patch_embed.", "cls_token", "pos_embed"), 3 * 4),  # every token-block Linear
    (lambda: build_model("resnet18", 2), ("conv1.", "bn1."), 19),  # every conv but the stem conv
    (_yolo, ("model.0.",), 44),  # the Conv-family convs LoRA adapts (backend override): stem, prediction convs out
], ids=["timm-vit", "timm-resnet", "ultralytics-yolov8n"])
def test_a_new_method_gets_its_defaults_from_roles_alone(role_scale, build, stem_prefix, n_scaled):
    model = build()
    plan = visionpeft.apply(model, [{"method": "role_scale"}])
    scales = [n for n in plan.trainable if n.endswith(".role_scale")]
    stem = [n for n in plan.trainable if not n.endswith(".role_scale")]
    assert len(scales) == n_scaled and stem and all(n.startswith(stem_prefix) for n in stem)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(plan.trainable)
    model.eval()  # in train mode BatchNorm would cancel a per-channel scale of the conv before it
    out = model(torch.rand(2, 3, 32, 32))
    pred = out[0] if isinstance(out, (list, tuple)) else out  # Ultralytics in eval: (predictions, extras)
    pred.float().square().mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    # timm's ResNet zero-initialises each block's last BN, so not every scale gets a gradient at init.
    assert grads & set(scales) and grads & set(stem) and grads <= set(plan.trainable)
