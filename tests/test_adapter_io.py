"""Adapter files: exact round trip, refusal of a different base, and no pickle on the path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import visionpeft
from visionpeft.errors import AdapterMismatchError, ConfigError

from .fixtures import tiny_cnn
from .test_plan import _train_steps

STRATEGIES = [{"method": "freeze", "n": 1, "bn": "train"}, {"method": "bitfit"}, {"method": "head"}]


def _trained(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    model = tiny_cnn(seed=0)
    visionpeft.apply(model, STRATEGIES)
    _train_steps(model)
    return model, visionpeft.save_adapter(model, tmp_path / "adapter", extra={"note": "test"})


def test_round_trip_reproduces_outputs(tmp_path: Path) -> None:
    model, directory = _trained(tmp_path)
    fresh = tiny_cnn(seed=0)
    plan = visionpeft.load_adapter(fresh, directory)
    x = torch.randn(3, 3, 8, 8)
    model.eval()
    fresh.eval()
    assert torch.equal(model(x), fresh(x))
    assert plan.trainable == visionpeft.get_plan(model).trainable


def test_files_hold_only_what_trains(tmp_path: Path) -> None:
    model, directory = _trained(tmp_path)
    tensors = load_file(str(directory / "adapter.safetensors"))
    plan = visionpeft.get_plan(model)
    bn_stats = {k for k in tensors if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert set(tensors) - bn_stats == set(plan.trainable)
    # bn: train keeps statistics of the frozen stem adapting, so they travel with the adapter
    assert "stem.1.running_mean" in bn_stats
    assert "stem.0.weight" not in tensors
    meta = json.loads((directory / "adapter.json").read_text())
    assert [s["method"] for s in meta["strategies"]] == ["freeze", "bitfit", "head"]
    assert meta["base"]["num_tensors"] > 0 and len(meta["base"]["sha256"]) == 64
    assert meta["adapter_bytes"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert meta["adapter_bytes"] == visionpeft.parameter_report(model)["adapter_bytes"]
    assert meta["extra"] == {"note": "test"}


def test_different_base_is_refused_naming_tensors(tmp_path: Path) -> None:
    _, directory = _trained(tmp_path)
    with pytest.raises(AdapterMismatchError, match=r"tensors differ \['stem\.0\.weight'"):
        visionpeft.load_adapter(tiny_cnn(seed=5), directory)


def test_edited_overall_fingerprint_is_named(tmp_path: Path) -> None:
    """base.sha256 edited while every per-tensor fingerprint agrees: the message said '...trained on (...): . Load'."""
    _, directory = _trained(tmp_path)
    meta = json.loads((directory / "adapter.json").read_text())
    meta["base"]["sha256"] = "abc"
    (directory / "adapter.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterMismatchError, match=r"base\.sha256 is abc\.\.\., these weights give [0-9a-f]{16}\.\.\. "
                                                   r"while every per-tensor fingerprint agrees"):
        visionpeft.load_adapter(tiny_cnn(seed=0), directory)


@pytest.mark.parametrize("name", [None, "a"])
def test_converted_base_is_named_as_a_dtype_not_other_weights(tmp_path: Path, name) -> None:
    """README: convert the base (.half()) before loading named adapters. The fingerprint (float32 bytes) cannot
    match a float16 base: say so and how to load (was '... tensors differ: the base weights differ')."""
    _, directory = _trained(tmp_path)
    half = tiny_cnn(seed=0).half()
    with pytest.raises(AdapterMismatchError, match=r"saved on a float32 base and this base is float16 .*"
                                                   r"pass ignore_fingerprint=True"):
        visionpeft.load_adapter(half, directory, name=name)
    visionpeft.load_adapter(half, directory, name=name, ignore_fingerprint=True)
    with pytest.raises(AdapterMismatchError, match=r"tensors differ"):  # other weights and another dtype: not this
        bad = tiny_cnn(seed=5).half()
        bad.stem[0].weight.data = bad.stem[0].weight.data.float()
        visionpeft.load_adapter(bad, directory)


def test_fingerprint_override_loads_anyway(tmp_path: Path) -> None:
    model, directory = _trained(tmp_path)
    other = tiny_cnn(seed=5)
    visionpeft.load_adapter(other, directory, ignore_fingerprint=True)
    assert torch.equal(other.fc.weight, model.fc.weight)


def test_shape_mismatch_is_refused_even_with_override(tmp_path: Path) -> None:
    _, directory = _trained(tmp_path)
    expected = r"shape mismatches .*'fc\.weight: adapter \(4, 16\) vs model \(7, 16\)'"
    with pytest.raises(AdapterMismatchError, match=expected):
        visionpeft.load_adapter(tiny_cnn(num_classes=7), directory, ignore_fingerprint=True)


def test_bad_adapter_directories(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no adapter config here"):
        visionpeft.load_adapter(tiny_cnn(), tmp_path)
    (tmp_path / "adapter.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        visionpeft.load_adapter(tiny_cnn(), tmp_path)
    (tmp_path / "adapter.json").write_text(json.dumps({"format": "peft"}))
    with pytest.raises(ConfigError, match="not a visionpeft adapter"):
        visionpeft.load_adapter(tiny_cnn(), tmp_path)


def test_save_requires_adapted_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no visionpeft strategies"):
        visionpeft.save_adapter(tiny_cnn(), tmp_path)


def test_adapted_model_survives_deepcopy_and_pickle(tmp_path: Path) -> None:
    import copy

    model, _ = _trained(tmp_path)
    clone = copy.deepcopy(model)
    torch.save(clone, tmp_path / "whole.pt")  # what Ultralytics does with its EMA model
    back = torch.load(tmp_path / "whole.pt", weights_only=False)
    visionpeft.get_plan(back).check(back)
    before = back.stem[1].running_mean.clone()
    back.train()
    back(torch.randn(2, 3, 8, 8))
    assert not torch.equal(before, back.stem[1].running_mean)  # bn: train policy survives pickling


# ------------------------------------------------------------------------------ base identity and configs


def test_issue_example_tf_padding_twin_is_refused(tmp_path: Path) -> None:
    """tf_efficientnet_lite0 and efficientnet_lite0 hold the same tensors but pad differently."""
    import timm

    torch.manual_seed(0)
    tf = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3).eval()
    plain = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=3).eval()
    plain.load_state_dict(tf.state_dict())  # same weights: the fingerprint alone cannot tell them apart
    visionpeft.apply(tf, [{"method": "head"}])
    visionpeft.save_adapter(tf, tmp_path)
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(AdapterMismatchError, match=r"trained on base 'timm:tf_efficientnet_lite0', this model is "
                                                    r"'timm:efficientnet_lite0'"):
        visionpeft.load_adapter(plain, tmp_path)
    assert visionpeft.get_plan(plain) is None
    # Overriding the name still meets the structure check (Conv2dSame vs Conv2d); both overrides load it.
    spec = visionpeft.backends.timm.timm_spec(plain, name="timm:tf_efficientnet_lite0")
    with pytest.raises(AdapterMismatchError, match=r"modules of another class .*Conv2dSame vs Conv2d"):
        visionpeft.load_adapter(plain, tmp_path, spec=spec)
    visionpeft.load_adapter(plain, tmp_path, ignore_identity=True)
    assert not torch.allclose(plain(x), tf(x), atol=1e-3)  # what the check protects from


def test_same_name_other_settings_is_refused(tmp_path: Path) -> None:
    _, directory = _trained(tmp_path)
    other = tiny_cnn(seed=0)
    other.block[0].padding = (2, 2)  # a module setting that changes outputs, with identical tensors
    with pytest.raises(AdapterMismatchError, match=r"1 modules with other settings .*\['block\.0'\]"):
        visionpeft.load_adapter(other, directory)
    assert visionpeft.get_plan(other) is None and not other.stem[0]._forward_pre_hooks


def _edit(directory: Path, **changes: object) -> None:
    meta = json.loads((directory / "adapter.json").read_text())
    for key, value in changes.items():
        index, field = key.split("__")
        meta["strategies"][int(index[1:])][field] = value
    (directory / "adapter.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"s0__alpha": 4.0}, r"strategies\.0\.alpha: 4\.0 in adapter\.json, 2\.0 when saved"),
        ({"s0__rank": 4}, r"strategies\.0\.rank: 4 in adapter\.json, 2 when saved"),
        ({"s0__rank": 2.0}, r"strategies\.0\.rank: 2\.0 in adapter\.json, 2 when saved"),  # was an empty list
        ({"s0__use_rslora": 0}, r"strategies\.0\.use_rslora: 0 in adapter\.json, False when saved"),
        ({"s0__use_rslora": True}, r"strategies\.0\.use_rslora"),
        ({"s0__qkv": "qv"}, r"strategies\.0\.qkv"),
        ({"s1__modules": ["fc", "stem"]}, r"strategies\.1\.modules"),
    ],
)
def test_config_that_disagrees_with_the_tensors_is_refused(tmp_path: Path, changes: dict, match: str) -> None:
    model = tiny_cnn(seed=0)
    visionpeft.apply(model, [{"method": "lora", "rank": 2, "alpha": 2.0}, {"method": "head"}])
    visionpeft.save_adapter(model, tmp_path)
    _edit(tmp_path, **changes)
    fresh = tiny_cnn(seed=0)
    with pytest.raises(AdapterMismatchError, match=match):
        visionpeft.load_adapter(fresh, tmp_path)
    assert visionpeft.get_plan(fresh) is None


def test_adapter_without_header_still_refuses_tensors_the_config_does_not_explain(tmp_path: Path) -> None:
    """Files saved before the safetensors header held the strategies: key set and shapes are still checked."""
    from safetensors.torch import save_file

    model = tiny_cnn(seed=0)
    visionpeft.apply(model, [{"method": "lora", "rank": 2, "targets": ["stem.0"]}, {"method": "head"}])
    visionpeft.save_adapter(model, tmp_path)
    tensors = load_file(str(tmp_path / "adapter.safetensors"))
    save_file(tensors, str(tmp_path / "adapter.safetensors"), metadata={"format": "visionpeft-adapter"})
    _edit(tmp_path, s0__targets=["stem.0", "block.0"])  # the config now creates adapters the file lacks
    expected = r"2 tensors the recorded strategies train are not in the adapter \['block\.0\.lora_A'"
    with pytest.raises(AdapterMismatchError, match=expected):
        visionpeft.load_adapter(tiny_cnn(seed=0), tmp_path)
    _edit(tmp_path, s0__targets=["stem.0"], s0__rank=3)
    with pytest.raises(AdapterMismatchError, match=r"stem\.0\.lora_A: adapter \(2, 3, 3, 3\) vs model \(3, 3, 3, 3\)"):
        visionpeft.load_adapter(tiny_cnn(seed=0), tmp_path)


def test_torn_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    _, directory = _trained(tmp_path)
    path = directory / "adapter.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ConfigError, match=r"adapter\.safetensors: not a readable safetensors file"):
        visionpeft.load_adapter(tiny_cnn(seed=0), directory)


def test_vit_pooling_is_part_of_the_structure(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    kw = {"img_size": 32, "depth": 1, "num_classes": 3}
    token = timm.create_model("vit_tiny_patch16_224", **kw)
    avg = timm.create_model("vit_tiny_patch16_224", global_pool="avg", fc_norm=False, **kw)
    avg.load_state_dict(token.state_dict())  # same tensors, another pooling: other outputs
    visionpeft.apply(token, [{"method": "lora", "rank": 2}])
    visionpeft.save_adapter(token, tmp_path)
    with pytest.raises(AdapterMismatchError, match=r"1 modules with other settings .*\['<root>'\]"):
        visionpeft.load_adapter(avg, tmp_path)


def test_ultralytics_adapter_saved_after_inference_loads_on_a_fresh_model(tmp_path: Path) -> None:
    """Runtime attributes (Detect.shape after a forward) and trainer bookkeeping are not identity."""
    from visionpeft.backends.ultralytics import build_model

    torch.manual_seed(0)
    used = build_model("yolov8n.yaml")
    torch.manual_seed(0)
    fresh = build_model("yolov8n.yaml")
    visionpeft.apply(used, [{"method": "lora", "rank": 2}])
    used.nc, used.task = 80, "detect"  # what Ultralytics' trainer sets on the model it trains
    with torch.no_grad():
        used.eval()(torch.zeros(1, 3, 64, 64))
    visionpeft.save_adapter(used, tmp_path)
    visionpeft.load_adapter(fresh, tmp_path)
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(fresh.eval()(x)[0], used(x)[0])


FIELD_CASES = [  # (field path, bad value or a deletion, what the message says was expected)
    ("format_version", "1", "an integer"),                 # the issue's example (was a TypeError traceback)
    ("format_version", True, "an integer"),
    ("format_version", 1.0, "an integer"),
    ("strategies", {"method": "head"}, "a list of mappings"),
    ("strategies", ["head"], "a list of mappings"),
    ("base", [], "a mapping"),
    ("base.name", 5, "a string or null"),
    ("base.sha256", None, "a string"),
    ("base.sha256", "<delete>", "missing"),
    ("base.tensors", {"w": 3}, "a mapping of strings to strings"),
    ("base.structure", "abc", "a mapping"),
    ("base.structure.modules", [], "a mapping of strings to strings"),
    ("plan", 3, "a mapping"),
    ("plan.resolved", {}, "a list of mappings"),
    ("adapter_bytes", "12", "an integer"),
    ("extra", "note", "a mapping"),
    ("extra.num_classes", "3", "an integer"),
    ("extra.classes", "abc", "a list of strings"),
    ("versions", {"torch": 2}, "a mapping of strings to strings"),
]


@pytest.mark.parametrize(("field", "value", "expected"), FIELD_CASES,
                         ids=[f"{f}={v!r}" for f, v, _ in FIELD_CASES])
def test_adapter_json_fields_of_the_wrong_type_are_one_line(tmp_path: Path, field: str, value, expected: str) -> None:
    """Issue 23 #7: every adapter.json field is type-checked, naming the field, before anything is loaded."""
    _, directory = _trained(tmp_path)
    path = directory / "adapter.json"
    meta = json.loads(path.read_text())
    if field.startswith("extra."):
        meta["extra"].update({"num_classes": 4, "classes": ["a", "b", "c", "d"]})
    *parents, leaf = field.split(".")
    node = meta
    for key in parents:
        node = node[key]
    if value == "<delete>":
        del node[leaf]
    else:
        node[leaf] = value
    path.write_text(json.dumps(meta))
    fresh = tiny_cnn(seed=0)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    for load in (lambda: visionpeft.load_adapter(fresh, directory),
                 lambda: visionpeft.load_adapter(fresh, directory, name="a")):
        with pytest.raises(ConfigError) as info:
            load()
        msg = str(info.value)
        assert f"adapter.json: {field}: " in msg and expected in msg and "\n" not in msg, msg
    assert visionpeft.get_plan(fresh) is None and visionpeft.list_adapters(fresh) == []
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())
