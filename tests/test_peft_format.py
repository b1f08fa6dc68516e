"""HF PEFT's adapter files, checked against HF PEFT itself: export (``save_adapter(format="peft")`` then
``PeftModel.from_pretrained``), import (``save_pretrained`` then ``load_adapter``), refusals, no stacking.

Adapters are initialised non-trivially (random B, magnitudes, LoHa/LoKr zero factors, trained head) so that a
no-op or a wrong scale fails; outputs are compared in eval mode (float32, 1e-5 relative to the output scale).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import visionpeft
from visionpeft.errors import ConfigError

peft = pytest.importorskip("peft")
timm = pytest.importorskip("timm")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             num_classes=5).eval()


def resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("resnet18", pretrained=False, num_classes=5).eval()


def vit_input() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def cnn_input() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def perturb(model: nn.Module, seed: int = 3) -> None:
    """Every trainable tensor gets a random nonzero value (B, magnitude, zero-initialised factors, the head)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = 0.2 if "magnitude" in name else 0.05
            p.add_(torch.randn(p.shape, generator=g) * scale)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@torch.no_grad()
def out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


def exported(model_fn, strategies, tmp_path: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Path]:
    """Adapt + perturb a model, export it in PEFT's format, load it with PEFT onto a fresh base: both outputs."""
    model = model_fn()
    visionpeft.apply(model, strategies)
    perturb(model)
    directory = visionpeft.save_adapter(model, tmp_path / "peft", format="peft")
    loaded = peft.PeftModel.from_pretrained(model_fn(), directory)
    return out(model, x), out(loaded, x), directory


def check_changed(model_fn, adapted: torch.Tensor, x: torch.Tensor) -> None:
    assert rel_diff(adapted, out(model_fn(), x)) > 1e-3  # the adapter does something: a no-op would fail


# ------------------------------------------------------------------------------------------------ export


@pytest.mark.parametrize("strategies", [
    [{"method": "lora", "rank": 4, "alpha": 8, "targets": ["qkv", "fc1", "attn.proj"]}, {"method": "head"}],
    [{"method": "lora", "rank": 2, "alpha": 3, "targets": ["qkv"], "qkv": "qv"}, {"method": "head"}],
    [{"method": "lora", "rank": 2, "targets": ["qkv"], "qkv": "qv", "use_rslora": True}],
    [{"method": "dora", "rank": 4, "targets": ["qkv", "fc2"]}, {"method": "head"}],
    [{"method": "dora", "rank": 2, "targets": ["qkv"], "qkv": "qv"}],
    [{"method": "loha", "rank": 2, "alpha": 4, "targets": ["qkv", "fc1"]}, {"method": "head"}],
    [{"method": "lokr", "rank": 2, "alpha": 4, "targets": ["qkv", "fc1"]}, {"method": "head"}],
    [{"method": "lokr", "rank": 2, "targets": ["qkv", "fc2"], "decompose_both": True, "rank_pattern": {"fc2": 16}}],
    [{"method": "lora", "rank": 4, "targets": ["Linear"], "rank_pattern": {"blocks.1.mlp.fc1": 2},
      "alpha_pattern": {"qkv": 3}, "dropout": 0.1}, {"method": "norm"}],
], ids=["lora", "lora-qv", "lora-qv-rslora", "dora", "dora-qv", "loha", "lokr", "lokr-both-full-w2",
        "patterns-norm"])
def test_export_vit_loads_in_peft_with_equal_outputs(strategies, tmp_path):
    x = vit_input()
    ours, theirs, directory = exported(vit, strategies, tmp_path, x)
    check_changed(vit, ours, x)
    assert rel_diff(theirs, ours) < 1e-5
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["peft_type"] == {"dora": "LORA"}.get(strategies[0]["method"], strategies[0]["method"].upper())
    if strategies[0].get("qkv") == "qv":  # q and v of rank r: one LoRA of rank 2r on the whole qkv
        assert config["r"] == 2 * strategies[0]["rank"]


def test_export_resnet_conv_lora_and_head(tmp_path):
    x = cnn_input()
    strategies = [{"method": "lora", "rank": 4, "alpha": 8, "targets": ["Conv2d"], "exclude": ["conv1"],
                   "rank_pattern": {"layer4.1.conv2": 2}}, {"method": "head"}]
    ours, theirs, directory = exported(resnet, strategies, tmp_path, x)
    check_changed(resnet, ours, x)
    assert rel_diff(theirs, ours) < 1e-5
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["fc"] and config["rank_pattern"] == {r"^layer4\.1\.conv2": 2}


@pytest.mark.parametrize("method", ["dora", "loha", "lokr"])
def test_export_resnet_other_methods(method, tmp_path):
    x = cnn_input()
    strategies = [{"method": method, "rank": 2, "targets": ["layer1.0.conv1", "layer2.0.downsample.0"]},
                  {"method": "head"}]
    ours, theirs, _ = exported(resnet, strategies, tmp_path, x)
    check_changed(resnet, ours, x)
    assert rel_diff(theirs, ours) < 1e-5


def test_export_budget_writes_per_layer_ranks(tmp_path):
    x = vit_input()
    strategies = [{"method": "lora", "budget": 0.02, "allocation": "uniform", "targets": ["qkv", "fc1", "fc2"]},
                  {"method": "head"}]
    ours, theirs, directory = exported(vit, strategies, tmp_path, x)
    assert rel_diff(theirs, ours) < 1e-5
    config = json.loads((directory / "adapter_config.json").read_text())
    ranks = {config["r"], *config["rank_pattern"].values()}
    assert len(ranks) > 1  # the budget gave the layers different ranks, and PEFT got each one


def test_exact_names_where_peft_suffix_matching_would_catch_more(tmp_path):
    """With patch_embed excluded, visionpeft's 'proj' is the attention projections; PEFT's target_modules
    ["proj"] would also catch patch_embed.proj. The export names the layers exactly."""
    x = vit_input()
    strategies = [{"method": "lora", "rank": 2, "targets": ["proj"], "exclude": ["patch_embed"]}]
    ours, theirs, directory = exported(vit, strategies, tmp_path, x)
    assert rel_diff(theirs, ours) < 1e-5
    loaded = peft.PeftModel.from_pretrained(vit(), directory)
    adapted = {n for n, m in loaded.named_modules() if hasattr(m, "lora_A") and isinstance(m.lora_A, nn.ModuleDict)}
    assert adapted == {"base_model.model.blocks.0.attn.proj", "base_model.model.blocks.1.attn.proj"}


# ------------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(("model_fn", "strategies", "message"), [
    (vit, [{"method": "vpt", "tokens": 2}], r"strategies\.0 \(vpt\) has no exact HF PEFT form"),
    (vit, [{"method": "ssf"}], r"strategies\.0 \(ssf\) has no exact HF PEFT form"),
    (vit, [{"method": "adaptformer"}], r"strategies\.0 \(adaptformer\) has no exact HF PEFT form"),
    (vit, [{"method": "lora", "rank": 2}, {"method": "bitfit"}], r"strategies\.1 \(bitfit\) .*bias option"),
    (vit, [{"method": "full"}], r"strategies\.0 \(full\) .*visionpeft merge"),
    (vit, [{"method": "head"}], "no LoRA, DoRA, LoHa or LoKr among the strategies"),
    (vit, [{"method": "lora", "rank": 2, "targets": ["qkv"]}, {"method": "loha", "rank": 2, "targets": ["fc1"]}],
     r"combine \['loha', 'lora'\]; a PEFT adapter has one type"),
    (vit, [{"method": "lora", "rank": 2, "targets": ["qkv"]},
           {"method": "lora", "rank": 2, "targets": ["fc1"], "dropout": 0.1}], "differ in"),
])
def test_export_refusals_write_nothing(model_fn, strategies, message, tmp_path):
    model = model_fn()
    visionpeft.apply(model, strategies)
    target = tmp_path / "peft"
    with pytest.raises(ConfigError, match=message) as info:
        visionpeft.save_adapter(model, target, format="peft")
    assert "\n" not in str(info.value) and "nothing was written" in str(info.value)
    assert not target.exists()


class _Convs(nn.Module):
    def __init__(self, **conv) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=2, **conv)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize(("conv", "method", "message"), [
    ({"groups": 8}, "lora", r"conv: Conv2d with groups=8; .*rank per group"),
    ({"groups": 2}, "dora", r"conv: Conv2d with groups=2"),
    ({"dilation": 2}, "lora", r"conv: Conv2d with dilation=\(2, 2\); PEFT's lora_A conv drops the dilation"),
    ({"padding_mode": "reflect"}, "loha", r"conv: Conv2d with padding_mode='reflect'"),
])
def test_export_refuses_convs_peft_computes_differently(conv, method, message, tmp_path):
    model = _Convs(**conv)
    visionpeft.apply(model, [{"method": method, "rank": 2, "targets": ["conv"], "max_param_fraction": None}])
    with pytest.raises(ConfigError, match=message):
        visionpeft.save_adapter(model, tmp_path / "peft", format="peft")
    assert not (tmp_path / "peft").exists()


def test_export_grouped_conv_loha_is_exact(tmp_path):
    """LoHa on a grouped conv: PEFT's flattened form with groups is visionpeft's (only LoRA's differs)."""
    torch.manual_seed(0)
    model, x = _Convs(groups=4).eval(), torch.randn(2, 8, 6, 6)
    fresh = _Convs(groups=4)
    fresh.load_state_dict(model.state_dict())
    visionpeft.apply(model, [{"method": "loha", "rank": 2, "targets": ["conv"]}])
    perturb(model)
    loaded = peft.PeftModel.from_pretrained(fresh, visionpeft.save_adapter(model, tmp_path / "p", format="peft"))
    assert rel_diff(out(loaded, x), out(model, x)) < 1e-5


def test_export_refuses_bn_statistics_outside_saved_modules(tmp_path):
    model = resnet()
    visionpeft.apply(model, [{"method": "lora", "rank": 2, "targets": ["layer1.0.conv1"]},
                             {"method": "norm", "bn": "train"}])
    # norm trains BN affines (whole modules: saved with their statistics): exportable
    visionpeft.save_adapter(model, tmp_path / "ok", format="peft")
    model = resnet()
    visionpeft.apply(model, [{"method": "freeze", "n": 1, "bn": "train"},
                             {"method": "lora", "rank": 2, "targets": ["layer4.0.conv1"]}])
    with pytest.raises(ConfigError, match=r"updates BatchNorm statistics \['bn1\.running_mean'.*no place for them"):
        visionpeft.save_adapter(model, tmp_path / "bad", format="peft")


def test_save_adapter_format_is_checked(tmp_path):
    model = vit()
    visionpeft.apply(model, [{"method": "lora", "rank": 2}])
    with pytest.raises(ConfigError, match="format='onnx'"):
        visionpeft.save_adapter(model, tmp_path / "x", format="onnx")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'extra' has no place"):
        visionpeft.save_adapter(model, tmp_path / "x", extra={"a": 1}, format="peft")


@pytest.mark.parametrize("fmt", ["visionpeft", "peft"])
def test_save_adapter_into_a_file_is_one_line(fmt, tmp_path):
    """A file where the folder should go (or above it): one line naming it (was FileExistsError /
    NotADirectoryError tracebacks in both formats)."""
    model = vit()
    visionpeft.apply(model, [{"method": "lora", "rank": 2}])
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    for target in (blocker, blocker / "sub"):
        with pytest.raises(ConfigError, match=rf"cannot create the folder {target}: {blocker} is a file"):
            visionpeft.save_adapter(model, target, format=fmt)
    assert blocker.read_text() == "x"


# ------------------------------------------------------------------------------------------------ import


def peft_saved(model_fn, config, tmp_path: Path, name: str = "peft_in") -> tuple[nn.Module, Path]:
    """A PEFT model of ``config`` on ``model_fn()`` with perturbed trainables, saved with ``save_pretrained``."""
    model = peft.get_peft_model(model_fn(), config)
    perturb(model)
    model.save_pretrained(tmp_path / name)
    return model, tmp_path / name


@pytest.mark.parametrize("config", [
    lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "fc1"], modules_to_save=["head"]),
    lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "proj"], use_rslora=True,
                            rank_pattern={"blocks.0.attn.qkv": 2}, alpha_pattern={"blocks.1.attn.proj": 3}),
    lambda: peft.LoraConfig(r=4, lora_alpha=4, target_modules=["qkv", "fc2"], use_dora=True,
                            modules_to_save=["head"]),
    lambda: peft.LoHaConfig(r=2, alpha=4, target_modules=["qkv", "fc1"], modules_to_save=["head"]),
    lambda: peft.LoKrConfig(r=2, alpha=4, target_modules=["qkv", "fc1"], modules_to_save=["head"]),
], ids=["lora", "rslora-rank-pattern", "dora", "loha", "lokr"])
def test_import_vit_equals_peft(config, tmp_path):
    x = vit_input()
    theirs, directory = peft_saved(vit, config(), tmp_path)
    model = vit()
    plan = visionpeft.load_adapter(model, directory)
    assert plan.trainable_count == sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    check_changed(vit, out(model, x), x)
    assert rel_diff(out(model, x), out(theirs, x)) < 1e-5


def test_import_rank_pattern_gives_each_layer_its_rank(tmp_path):
    # PEFT's "proj" catches patch_embed.proj too (a Conv2d): the import adapts exactly what PEFT adapted.
    cfg = peft.LoraConfig(r=4, target_modules=["proj"], rank_pattern={"blocks.1.attn.proj": 2, "patch_embed.proj": 3})
    theirs, directory = peft_saved(vit, cfg, tmp_path)
    model = vit()
    visionpeft.load_adapter(model, directory)
    ranks = {n: m.rank for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "rank")}
    assert ranks == {"patch_embed.proj": 3, "blocks.0.attn.proj": 4, "blocks.1.attn.proj": 2}
    assert rel_diff(out(model, vit_input()), out(theirs, vit_input())) < 1e-5


@pytest.mark.parametrize("config", [
    lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=["conv1", "conv2"], modules_to_save=["fc"]),
    lambda: peft.LoraConfig(r=2, target_modules=["layer1.0.conv1", "downsample.0"], use_dora=True,
                            modules_to_save=["fc"]),
    lambda: peft.LoHaConfig(r=2, alpha=2, target_modules=["layer1.0.conv1", "fc"]),
    lambda: peft.LoKrConfig(r=2, alpha=2, target_modules=["layer1.0.conv1", "layer3.0.conv2"],
                            modules_to_save=["fc"]),
], ids=["lora", "dora", "loha", "lokr"])
def test_import_resnet_equals_peft(config, tmp_path):
    x = cnn_input()
    theirs, directory = peft_saved(resnet, config(), tmp_path)
    model = resnet()
    visionpeft.load_adapter(model, directory)
    check_changed(resnet, out(model, x), x)
    assert rel_diff(out(model, x), out(theirs, x)) < 1e-5


def test_import_then_export_round_trip(tmp_path):
    """PEFT -> visionpeft -> PEFT: the re-exported adapter loads in PEFT with the same outputs."""
    x = vit_input()
    cfg = peft.LoraConfig(r=4, target_modules=["qkv"], modules_to_save=["head"], rank_pattern={"blocks.1.attn.qkv": 2})
    theirs, directory = peft_saved(vit, cfg, tmp_path)
    model = vit()
    visionpeft.load_adapter(model, directory)
    again = peft.PeftModel.from_pretrained(vit(), visionpeft.save_adapter(model, tmp_path / "again", format="peft"))
    assert rel_diff(out(again, x), out(theirs, x)) < 1e-5


def test_named_peft_adapters_switch_and_merge_like_peft(tmp_path):
    x = vit_input()
    a, dir_a = peft_saved(vit, peft.LoraConfig(r=4, target_modules=["qkv"], modules_to_save=["head"]), tmp_path, "a")
    b, dir_b = peft_saved(vit, peft.LoHaConfig(r=2, target_modules=["fc1", "fc2"]), tmp_path, "b")
    model = vit()
    base = out(model, x)
    visionpeft.load_adapter(model, dir_a, name="a")
    visionpeft.load_adapter(model, dir_b, name="b")
    assert rel_diff(out(model, x), out(a, x)) < 1e-5
    visionpeft.set_adapter(model, "b")
    assert rel_diff(out(model, x), out(b, x)) < 1e-5
    visionpeft.set_adapter(model, None)
    assert torch.equal(out(model, x), base)
    visionpeft.set_adapter(model, "a")
    visionpeft.merge(model)
    merged_peft = a.merge_and_unload()
    assert rel_diff(out(model, x), out(merged_peft, x)) < 1e-5
    assert set(model.state_dict()) == set(vit().state_dict())  # the plain architecture again


def test_hub_repo_id_goes_through_huggingface_hub(tmp_path, monkeypatch):
    """A repo id (no such local folder) is fetched with huggingface_hub.snapshot_download; offline, one line."""
    import huggingface_hub

    theirs, directory = peft_saved(vit, peft.LoraConfig(r=2, target_modules=["qkv"]), tmp_path)
    calls = []

    def fake_download(repo_id, allow_patterns=None, **kw):
        calls.append((repo_id, tuple(allow_patterns)))
        return str(directory)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    model = vit()
    visionpeft.load_adapter(model, "someone/vit-lora")
    assert calls == [("someone/vit-lora", ("adapter_config.json", "adapter_model.safetensors"))]
    assert rel_diff(out(model, vit_input()), out(theirs, vit_input())) < 1e-5
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="could not be fetched from the Hugging Face Hub") as info:
        visionpeft.load_adapter(vit(), "someone/not-here")
    assert "\n" not in str(info.value)


def _edit_config(directory: Path, **changes) -> Path:
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize(("changes", "message"), [
    ({"peft_type": "IA3"}, "peft_type 'IA3' has no visionpeft equivalent"),
    ({"bias": "all"}, "bias='all'"),
    ({"fan_in_fan_out": True}, "fan_in_fan_out=True is a PEFT option visionpeft has no form for"),
    ({"init_lora_weights": "pissa"}, "init_lora_weights='pissa' rewrites the base weights"),
    ({"modules_to_save": None}, r"tensor 'head\.(weight|bias)' is neither a lora factor"),
])
def test_import_refusals(changes, message, tmp_path):
    _, directory = peft_saved(vit, peft.LoraConfig(r=2, target_modules=["qkv"], modules_to_save=["head"]), tmp_path)
    model = vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=message) as info:
        visionpeft.load_adapter(model, _edit_config(directory, **changes))
    assert "\n" not in str(info.value)
    assert visionpeft.get_plan(model) is None and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("changes", "message"), [
    ({"r": None}, r"adapter_config\.json: r: expected a positive integer, got None"),
    ({"r": "2"}, r"r: expected a positive integer, got '2' \(str\)"),
    ({"r": 0}, r"r: expected a positive integer, got 0"),
    ({"lora_alpha": "x"}, r"lora_alpha: expected a finite number, got 'x'"),
    ({"lora_alpha": float("nan")}, r"lora_alpha: expected a finite number, got nan"),
    ({"lora_dropout": "0.1"}, r"lora_dropout: expected a number in \[0, 1\)"),
    ({"use_dora": "false"}, r"use_dora: expected true or false, got 'false'"),
    ({"peft_type": ["LORA"]}, r"peft_type: expected a string"),
    ({"modules_to_save": "head"}, r"modules_to_save: expected a list of module names, got 'head'"),
    ({"rank_pattern": ["qkv"]}, r"rank_pattern: expected a mapping of module-name regex -> a positive integer"),
    ({"rank_pattern": {"(": 4}}, r"rank_pattern: key '\(' is no regular expression"),
    ({"alpha_pattern": {"qkv": None}}, r"alpha_pattern: 'qkv': expected a finite number, got None"),
])
def test_import_config_field_types(changes, message, tmp_path):
    """Issue 23 kind 7 for PEFT's file: a field of the wrong type is one line naming it (was a TypeError /
    ValueError / AttributeError / re.error traceback from wherever it was first used)."""
    _, directory = peft_saved(vit, peft.LoraConfig(r=2, target_modules=["qkv"], modules_to_save=["head"]), tmp_path)
    model = vit()
    with pytest.raises(ConfigError, match=message) as info:
        visionpeft.load_adapter(model, _edit_config(directory, **changes))
    assert "\n" not in str(info.value) and "re-save it with PEFT's save_pretrained" in str(info.value)
    assert visionpeft.get_plan(model) is None


def test_import_messages_name_the_real_cause(tmp_path):
    """A CP-decomposed conv names use_effective_conv2d; a saved module the model lacks is named as such (both said
    'tensor ... is neither a <method> factor nor inside modules_to_save')."""
    _, directory = peft_saved(resnet, peft.LoHaConfig(r=2, target_modules=["conv1"], use_effective_conv2d=True),
                              tmp_path)
    with pytest.raises(ConfigError, match=r"conv1: a CP-decomposed conv \(use_effective_conv2d=True\), which "
                                          r"visionpeft's loha has no form for"):
        visionpeft.load_adapter(resnet(), directory)
    _, directory = peft_saved(vit, peft.LoraConfig(r=2, target_modules=["qkv"], modules_to_save=["head"]), tmp_path,
                              "b")
    plain = nn.Sequential()
    plain.blocks = vit().blocks  # the same blocks, no 'head'
    with pytest.raises(ConfigError, match=r"the model has no module 'head' \(saved whole in the file"):
        visionpeft.load_adapter(plain, directory)


def test_named_peft_adapter_folder_points_to_its_subfolder(tmp_path):
    """PEFT writes adapter 'mine' to DIR/mine: loading DIR names the subfolder (was 'no adapter config here')."""
    wrapped = peft.get_peft_model(vit(), peft.LoraConfig(r=2, target_modules=["qkv"]), adapter_name="mine")
    wrapped.save_pretrained(str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"HF PEFT adapters are in its subfolders \['mine'\]: pass one of them"):
        visionpeft.load_adapter(vit(), tmp_path / "out")
    visionpeft.load_adapter(vit(), tmp_path / "out" / "mine")


def test_import_refuses_layers_visionpeft_cannot_represent(tmp_path):
    # PEFT's LoRA on a grouped conv (one input conv over all channels) is not visionpeft's conv LoRA.
    torch.manual_seed(0)
    _, directory = peft_saved(lambda: _Convs(groups=2), peft.LoraConfig(r=2, target_modules=["conv"]), tmp_path)
    with pytest.raises(ConfigError, match=r"conv: PEFT's LoRA on a Conv2d with groups=2"):
        visionpeft.load_adapter(_Convs(groups=2), directory)
    # LoHa's rank_dropout (training behaviour) has no visionpeft form
    _, directory = peft_saved(vit, peft.LoHaConfig(r=2, target_modules=["qkv"], rank_dropout=0.1), tmp_path, "d")
    with pytest.raises(ConfigError, match="rank_dropout=0.1"):
        visionpeft.load_adapter(vit(), directory)
    # the adapter does not fit this model (another number of classes): shapes named
    _, directory = peft_saved(vit, peft.LoraConfig(r=2, target_modules=["qkv"], modules_to_save=["head"]), tmp_path,
                              "e")
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              num_classes=7)
    with pytest.raises(ConfigError, match=r"shape mismatches .*head\.weight: file \(5, 192\) vs model \(7, 192\)"):
        visionpeft.load_adapter(other, directory)
    assert visionpeft.get_plan(other) is None and not any("lora" in k for k in other.state_dict())  # rolled back
    # a pickled adapter_model.bin is never loaded
    (directory / "adapter_model.safetensors").rename(directory / "adapter_model.bin")
    with pytest.raises(ConfigError, match="a pickle, which visionpeft never loads"):
        visionpeft.load_adapter(vit(), directory)


# ------------------------------------------------------------------------------------------------ no stacking


def test_apply_and_load_refuse_models_carrying_peft_adapters(tmp_path):
    wrapped = peft.get_peft_model(vit(), peft.LoraConfig(r=2, target_modules=["qkv"]))
    with pytest.raises(ConfigError, match=r"apply: this model carries HF PEFT adapters \(PeftModel at <root>\).*"
                                          r"merge_and_unload\(\).*visionpeft\.load_adapter") as info:
        visionpeft.apply(wrapped, [{"method": "lora", "rank": 2}])
    assert "\n" not in str(info.value)
    assert not any(type(m).__module__.startswith("visionpeft") for m in wrapped.modules())
    # the unwrapped model still holds PEFT's layers: refused too, naming the layer
    inner = wrapped.base_model.model
    with pytest.raises(ConfigError, match=r"\(Linear at blocks\.0\.attn\.qkv\)"):
        visionpeft.apply(inner, [{"method": "lora", "rank": 2}])
    visionpeft.apply(vit(), [{"method": "lora", "rank": 2}])  # a plain model is fine
    _, directory = peft_saved(vit, peft.LoraConfig(r=2, target_modules=["qkv"]), tmp_path)
    for name in (None, "a"):
        with pytest.raises(ConfigError, match="load_adapter: this model carries HF PEFT adapters"):
            visionpeft.load_adapter(inner, directory, name=name)


# ------------------------------------------------------------------------------------------------ Ultralytics


def _yolo(cfg: str = "yolov8n.yaml") -> nn.Module:
    pytest.importorskip("ultralytics")
    from visionpeft.backends.ultralytics import build_model

    torch.manual_seed(0)
    model = build_model(cfg, nc=3).eval()
    with torch.no_grad():  # a freshly built YOLO's activations fade to ~1e-10: give it He-scaled conv weights
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, (2.0 / m.weight[0].numel()) ** 0.5)
    return model


def _raw(y) -> torch.Tensor:
    """The head's input maps P3-P5 (the head's prediction convs of a freshly built model give near-constant
    outputs, and visionpeft's default LoRA leaves them to the head strategy)."""
    raw = y[1]  # Ultralytics 8.4: {"boxes": (B, 4 * reg_max, N), "scores": (B, nc, N), "feats": [P3, P4, P5]}
    return torch.cat([f.flatten() for f in raw["feats"]])


def test_yolo_conv_lora_exports_for_peft_on_the_plain_detection_model(tmp_path):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    model = _yolo()
    visionpeft.apply(model, [{"method": "lora", "rank": 4}])
    perturb(model)
    directory = visionpeft.save_adapter(model, tmp_path / "yolo_peft", format="peft")
    loaded = peft.PeftModel.from_pretrained(_yolo(), directory).eval()
    with torch.no_grad():
        ours, theirs, plain = _raw(model(x)), _raw(loaded(x)), _raw(_yolo()(x))
    assert rel_diff(ours, plain) > 1e-3
    assert rel_diff(theirs, ours) < 1e-5
    back = _yolo()  # and back: visionpeft reads the PEFT folder onto the plain detector
    visionpeft.load_adapter(back, directory)
    with torch.no_grad():
        assert rel_diff(_raw(back(x)), ours) < 1e-5


def test_yolo_grouped_convs_are_refused(tmp_path):
    model = _yolo("yolo11n.yaml")  # DWConv in its head: depthwise, groups = channels
    visionpeft.apply(model, [{"method": "lora", "rank": 4, "max_param_fraction": None}])
    with pytest.raises(ConfigError, match=r"model\.\d+\.\S+: Conv2d with groups=\d+; .*rank per group"):
        visionpeft.save_adapter(model, tmp_path / "yolo11", format="peft")
    assert not (tmp_path / "yolo11").exists()


def test_peft_is_never_imported_by_visionpeft(tmp_path):
    """The format is JSON + safetensors: writing, reading and the stacking check work without importing peft."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import sys, torch, visionpeft
        from torch import nn
        def net():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        m = net()
        visionpeft.apply(m, [{{"method": "lora", "rank": 2, "targets": ["0"]}}])
        visionpeft.save_adapter(m, {str(tmp_path / 'seq')!r}, format="peft")
        visionpeft.load_adapter(net(), {str(tmp_path / 'seq')!r})
        print(sorted({{k.split('.')[0] for k in sys.modules}} & {{"peft", "transformers", "huggingface_hub"}}))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_imported_adapter_on_stem_and_head_saves_and_reloads_in_visionpeft_format(tmp_path):
    """PEFT may adapt layers the backend excludes by default (patch_embed.proj, the head): the import says
    ``default_exclude: false``, so the adapter also survives a save / load in visionpeft's own format."""
    x = vit_input()
    theirs, directory = peft_saved(vit, peft.LoraConfig(r=2, target_modules=["qkv", "head", "patch_embed.proj"]),
                                   tmp_path)
    model = vit()
    visionpeft.load_adapter(model, directory)
    from visionpeft.api import get_state

    assert get_state(model).configs[0].default_exclude is False
    again = vit()
    visionpeft.load_adapter(again, visionpeft.save_adapter(model, tmp_path / "vp"))
    assert {"head", "patch_embed.proj"} <= {n for n, m in again.named_modules() if hasattr(m, "lora_A")}
    assert rel_diff(out(again, x), out(theirs, x)) < 1e-5
    # the same exclusions still apply to visionpeft's own configs by default
    with pytest.raises(ConfigError, match="head"):
        visionpeft.apply(vit(), [{"method": "lora", "rank": 2, "targets": ["head"]}])
