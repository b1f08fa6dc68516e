"""ModelSpec roles of every Ultralytics task model: head, default LoRA targets, always-frozen; RT-DETR's decoder."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("ultralytics")

import visionpeft  # noqa: E402
from visionpeft.backends import spec_for  # noqa: E402
from visionpeft.backends.ultralytics import build_model, is_rtdetr, model_task  # noqa: E402
from visionpeft.errors import ConfigError  # noqa: E402


@pytest.mark.parametrize("cfg,task,head_cls", [("yolov8n-seg.yaml", "segment", "Segment"),
                                                ("yolov8n-pose.yaml", "pose", "Pose"),
                                                ("yolov8n-obb.yaml", "obb", "OBB"),
                                                ("yolov8n-cls.yaml", "classify", "Classify")])
def test_task_models_get_their_roles(cfg, task, head_cls):
    model = build_model(cfg, nc=3, task=task)
    spec = spec_for(model)
    last = len(model.model) - 1
    assert model_task(model) == task and spec.extra["task"] == task and spec.extra["head_type"] == head_cls
    assert spec.head == (f"model.{last}",)
    assert bool(spec.always_frozen) == (task != "classify")  # Classify has no DFL
    plan = visionpeft.apply(model, [{"method": "lora", "rank": 2}, {"method": "head"}])
    wrapped = [n for n, m in model.named_modules() if type(m).__name__ == "LoRAConv2d"]
    assert wrapped and not any(n.startswith(f"model.{last}.") or n.startswith("model.0.") for n in wrapped)
    head_params = {n for n, _ in model.named_parameters() if n.startswith(f"model.{last}.") and ".dfl" not in n}
    assert {n for n, o in plan.trainable.items() if o == "head"} == head_params


def test_a_model_of_another_task_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"yolov8n-pose.yaml: a model yaml of task 'pose', but the recipe's task "
                                          r"trains 'segment' models; set task: pose"):
        build_model("yolov8n-pose.yaml", task="segment")


def test_rtdetr_decoder_linears_are_lora_targets_and_merge_exactly():
    model = build_model("rtdetr-l.yaml", nc=2, task="detect")
    assert is_rtdetr(model)
    spec = spec_for(model)
    last = len(model.model) - 1
    assert spec.head == tuple(f"model.{last}.{n}" for n in ("enc_score_head", "dec_score_head",
                                                            "denoising_class_embed"))
    plan = visionpeft.apply(model, [{"method": "lora", "rank": 4}, {"method": "head"}])
    linears = {n for n, m in model.named_modules() if type(m).__name__ == "LoRALinear"}
    layers = len(model.model[last].decoder.layers)
    assert len(linears) == 6 * layers and all(n.startswith(f"model.{last}.decoder.layers.") for n in linears)
    assert plan.by_strategy["head"] > 0
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():  # a trained adapter: B non-zero, so a no-op merge would fail
        if hasattr(m, "lora_B"):
            with torch.no_grad():
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen) * 0.05)
    x = torch.rand(1, 3, 64, 64, generator=gen)
    model.eval()
    merged = visionpeft.merge(copy.deepcopy(model))
    assert not any(type(m).__name__ == "LoRALinear" for m in merged.modules())
    with torch.no_grad():
        a, b = model(x)[0], merged(x)[0]
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
