"""Task models on the COCO YOLOv5n backbone + neck: layers 0-23 copied exactly, the task head new."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("ultralytics")

from visionpeft.backends.ultralytics import build_model, model_task  # noqa: E402
from visionpeft.backends.ultralytics_transfer import (  # noqa: E402
    build_transfer_model,
    copy_layers,
    main,
    task_cfg,
)
from visionpeft.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def source(shared):
    return shared / "weights" / "yolov5nu-cocobackbone.pt"


@pytest.mark.parametrize("task,head", [("segment", "Segment"), ("pose", "Pose"), ("obb", "OBB")])
def test_layers_0_to_23_are_the_coco_tensors(source, task, head):
    coco = build_model(source).state_dict()
    model = build_transfer_model(task, source, nc=1, kpt_shape=(12, 2))
    assert model_task(model) == task and type(model.model[-1]).__name__ == head and len(model.model) == 25
    sd = model.state_dict()
    body = [k for k in coco if int(k.split(".")[1]) < 24]
    assert len(body) > 100 and all(k in sd for k in body)
    for k in body:
        assert torch.equal(sd[k], coco[k].float()), k
    # The head is new: its box branch has the detector's shapes but not its values (seeded random init differs).
    head_keys = [k for k in sd if k.startswith("model.24.") and k in coco and sd[k].shape == coco[k].shape
                 and sd[k].dtype.is_floating_point and sd[k].numel() > 1 and "dfl" not in k]
    assert head_keys and any(not torch.equal(sd[k], coco[k].float()) for k in head_keys)


def test_checkpoint_round_trip_and_cli(source, tmp_path, capsys):
    out = tmp_path / "seg.pt"
    assert main(["segment", str(source), "-o", str(out), "--nc", "2"]) == 0
    loaded = build_model(out, task="segment")
    assert model_task(loaded) == "segment" and int(loaded.nc) == 2
    coco = build_model(source).state_dict()
    assert torch.equal(loaded.state_dict()["model.23.cv3.conv.weight"].half(), coco["model.23.cv3.conv.weight"].half())
    with pytest.raises(ConfigError, match="a SegmentationModel of task 'segment', but the recipe's task trains 'pose'"):
        build_model(out, task="pose")


def test_mismatched_layers_are_refused():
    from ultralytics.nn.tasks import DetectionModel

    small = DetectionModel(task_cfg("detect", "yolov5n.yaml"), verbose=False)
    other = DetectionModel(task_cfg("detect", "yolov5s.yaml"), verbose=False)
    with pytest.raises(ConfigError, match=r"layers 0-23: model\.0\.bn\.bias has shape \(32,\) in the source, \(16,\)"):
        copy_layers(small, other, range(24))
    with pytest.raises(ConfigError, match="expected one of"):
        task_cfg("depth")
