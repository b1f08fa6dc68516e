"""The Ultralytics backend: building models, clear errors for bad files, the ModelSpec, conv LoRA on YOLO."""

from __future__ import annotations

import copy
import dataclasses
import functools
import zipfile

import pytest
import torch

import visionpeft
from visionpeft.backends import spec_for
from visionpeft.backends.ultralytics import build_model, check_checkpoint_file, ultralytics_spec
from visionpeft.errors import ConfigError

pytest.importorskip("ultralytics")


@functools.cache
def _built(cfg: str):
    return build_model(cfg)


def fresh(cfg: str):
    """A new model of ``cfg`` (building one runs a stride-probing forward pass: copy a cached one instead)."""
    return copy.deepcopy(_built(cfg))


@pytest.fixture(scope="module")
def yolo11():
    return fresh("yolo11n.yaml")


def _ultralytics_frozen(model, freeze) -> set[str]:
    """What Ultralytics' ``_setup_train`` freezes for ``freeze`` (its substring rule, copied as written)."""
    idx = range(freeze) if isinstance(freeze, int) else freeze
    names = [f"model.{x}." for x in idx] + [".dfl"]
    return {k for k, _ in model.named_parameters() if any(x in k for x in names)}


def test_build_from_yaml_and_spec(yolo11):
    spec = ultralytics_spec(yolo11)
    assert spec is not None and spec_for(yolo11) == spec  # the lead's dispatcher picks this backend
    assert spec.backend == "ultralytics" and spec.name == "ultralytics:yolo11n:nc80"
    assert spec.blocks == tuple(f"model.{i}" for i in range(24))
    assert spec.head == ("model.23",)
    assert type(yolo11.model[23]).__name__ == "Detect"


def test_build_with_nc_and_bad_inputs(tmp_path):
    assert build_model("yolov8n.yaml", nc=3).nc == 3
    with pytest.raises(ConfigError, match="not found"):
        build_model("yolov99n.yaml")
    with pytest.raises(ConfigError, match="neither"):
        build_model("resnet50")
    with pytest.raises(ConfigError, match="does not exist"):
        build_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match=r"junk\.pt: not an Ultralytics checkpoint"):
        build_model(junk)
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, plain)  # a torch archive, but no Ultralytics model inside
    with pytest.raises(ConfigError, match=r"plain\.pt: not an Ultralytics checkpoint"):
        build_model(plain)
    cls_yaml = "yolo11n-cls.yaml"  # a classify model: built for task: classify, refused where detect is asked
    assert type(build_model(cls_yaml)).__name__ == "ClassificationModel"
    with pytest.raises(ConfigError, match="a model yaml of task 'classify', but the recipe's task trains 'detect'"):
        build_model(cls_yaml, task="detect")


def test_checkpoint_check_reads_pickle_without_running_it(tmp_path):
    class Boom:
        def __reduce__(self):  # would run on unpickling; the check must never unpickle
            return (exec, ("raise SystemExit('executed')",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Boom()}, path)
    with pytest.raises(ConfigError, match="not an Ultralytics checkpoint"):
        check_checkpoint_file(path)
    assert zipfile.is_zipfile(path)


def test_real_checkpoints(shared):
    model = build_model(shared / "weights" / "yolov5nu-cocobackbone.pt")
    assert model.nc == 80 and len(model.model) == 25
    assert ultralytics_spec(model).head == ("model.24",)
    with pytest.raises(ConfigError, match="original YOLOv5-repository checkpoint"):
        build_model(shared / "weights" / "yolov5n.pt")
    with pytest.raises(ConfigError, match="neither"):
        build_model(shared / "weights" / "tf_efficientnet_lite0.in1k.safetensors")


@pytest.mark.parametrize("cfg", ["yolo11n.yaml", "yolov8n.yaml", "yolov5n.yaml"])
@pytest.mark.parametrize("n", [1, 10, [0, 3, 5]])
def test_freeze_n_matches_ultralytics_rule(cfg, n):
    model = fresh(cfg)
    expected = _ultralytics_frozen(model, n)
    plan = visionpeft.apply(model, [{"method": "freeze", "n": n}])
    frozen = {k for k, _ in model.named_parameters()} - set(plan.trainable)
    assert frozen == expected
    assert not any(".dfl" in k for k in plan.trainable)


def test_default_lora_targets(yolo11):
    model = fresh("yolo11n.yaml")
    visionpeft.apply(model, [{"method": "lora", "rank": 4}])
    wrapped = {n for n, m in model.named_modules() if type(m).__name__ == "LoRAConv2d"}
    # Every wrapped layer is a Conv block's conv; stem, head and depthwise layers (adapter > layer) are skipped.
    assert {"model.1.conv", "model.2.m.0.cv1.conv", "model.9.cv1.conv", "model.10.m.0.attn.qkv.conv",
            "model.10.m.0.ffn.0.conv", "model.22.m.0.m.1.cv2.conv"} <= wrapped
    assert "model.0.conv" not in wrapped and "model.10.m.0.attn.pe.conv" not in wrapped
    assert not any(n.startswith("model.23.") for n in wrapped)


@pytest.mark.parametrize("cfg", ["yolo11n.yaml", "yolov8n.yaml", "yolov5n.yaml"])
def test_default_lora_targets_are_the_conv_blocks(cfg):
    plain = _built(cfg)
    head = f"model.{len(plain.model) - 1}."
    expected = {
        n for n, m in plain.named_modules()
        if isinstance(m, torch.nn.Conv2d) and n.endswith(".conv") and not n.startswith(("model.0.", head))
        and m.groups == 1
    }
    model = fresh(cfg)
    plan = visionpeft.apply(model, [{"method": "lora", "rank": 4}])
    wrapped = {n for n, m in model.named_modules() if type(m).__name__ == "LoRAConv2d"}
    assert wrapped == expected and len(wrapped) > 40
    # Only the adapters train: rank * (in * k * k + out) per layer, nothing else.
    count = sum(4 * (c.in_channels * c.kernel_size[0] * c.kernel_size[1] + c.out_channels)
                for c in (plain.get_submodule(n) for n in expected))
    assert plan.trainable_count == count


def _randomize_lora(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)


def _randomize_bn(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=m.running_mean.dtype) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=m.running_var.dtype) + 0.5)


def test_lora_on_every_yolo11_conv_type_merges_through_ultralytics_fuse():
    torch.manual_seed(0)
    model = fresh("yolo11n.yaml").double().eval()
    _randomize_bn(model)
    spec = dataclasses.replace(ultralytics_spec(model), head=())  # let LoRA reach the Detect head's convs
    strategies = [{"method": "lora", "rank": 2, "max_param_fraction": None}]
    visionpeft.apply(model, strategies, spec=spec)
    kinds = {
        "Conv": "model.1.conv",
        "DWConv (head)": "model.23.cv3.0.0.0.conv",
        "C3k2 bottleneck": "model.2.m.0.cv1.conv",
        "C3k (in C3k2)": "model.6.m.0.m.0.cv1.conv",
        "SPPF": "model.9.cv2.conv",
        "C2PSA qkv": "model.10.m.0.attn.qkv.conv",
        "C2PSA depthwise pe": "model.10.m.0.attn.pe.conv",
        "Detect box conv": "model.23.cv2.1.0.conv",
    }
    for kind, name in kinds.items():
        assert type(model.get_submodule(name)).__name__ == "LoRAConv2d", kind
    assert model.get_submodule("model.23.cv3.0.0.0.conv").base_layer.groups == 64  # really depthwise
    _randomize_lora(model)
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        adapted = model(x)[0]
        from visionpeft.tasks.ultralytics.merge import merged_copy

        merged = merged_copy(model)
        assert not any(type(m).__name__.startswith("LoRA") for m in merged.modules())
        plain = fresh("yolo11n.yaml").double().eval()
        plain.load_state_dict(merged.state_dict(), strict=True)  # the original architecture again
        fused = merged.fuse(verbose=False)  # Ultralytics' own Conv+BN fusion, as AutoBackend/export do
        out = fused(x)[0]
    assert torch.allclose(out, adapted, atol=1e-9, rtol=1e-9)
    # A no-op adapter would pass the equality above: the update must change the output.
    base = fresh("yolo11n.yaml").double().eval()
    _randomize_bn(base)
    with torch.no_grad():
        assert (base(x)[0] - adapted).abs().max() > 1e-3


@pytest.mark.parametrize("cfg,task", [("yolov8n-seg.yaml", "segment"), ("yolo11n-pose.yaml", "pose"),
                                      ("yolo11n-obb.yaml", "obb"), ("yolo11n-cls.yaml", "classify")])
def test_plain_checkpoint_of_a_yaml_model_keeps_its_task(cfg, task, tmp_path):
    """A model built from a yaml has no Ultralytics ``args``; its plain checkpoint must still name its task, or
    Ultralytics' ``load_checkpoint`` fills ``task`` from its defaults and ``YOLO(path)`` treats it as a detector."""
    from ultralytics import YOLO

    from visionpeft.backends.ultralytics import BACKEND

    path = BACKEND.export_merged(fresh(cfg), tmp_path / "m.pt")
    assert YOLO(str(path)).task == task
    assert type(build_model(path, task=task)).__name__ == type(_built(cfg)).__name__
