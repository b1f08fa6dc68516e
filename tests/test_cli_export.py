"""``visionpeft export RUN_DIR --format {visionpeft,peft} -o DIR`` on a trained classification run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from visionpeft.cli import main
from visionpeft.data.toy import make_toy_imagefolder

peft = pytest.importorskip("peft")


def _train(tmp_path: Path, strategies: list[dict]) -> Path:
    data = make_toy_imagefolder(tmp_path / "toy", classes=3, train_per_class=4, val_per_class=2, size=16)
    doc = {"name": "x", "model": "test_efficientnet", "data": str(data), "output": str(tmp_path / "runs"),
           "strategies": strategies, "tensorboard": False,
           "train": {"epochs": 1, "batch_size": 4, "workers": 0, "progress": False},
           "augment": {"img_size": 32, "random_resized_crop": False, "hflip": 0.0}}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert main(["train", str(recipe)]) == 0
    (run,) = (tmp_path / "runs").glob("x-*")
    return run


def test_export_run_in_both_formats(tmp_path, capsys):
    from visionpeft.tasks.base import load_run_recipe
    from visionpeft.tasks.classification import TASK
    from visionpeft.tasks.classification.model import build_base

    run = _train(tmp_path, [{"method": "lora", "rank": 2, "targets": ["conv_head", "conv_stem"]}, {"method": "head"}])
    assert main(["export", str(run), "--format", "peft", "-o", str(tmp_path / "peft")]) == 0
    assert "peft adapter written to" in capsys.readouterr().out
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["modules_to_save"] == ["classifier"]
    _, model, _, _ = TASK.load_run(run)
    base, _, _ = build_base(load_run_recipe(run), 3)
    loaded = peft.PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model.eval()(x), loaded(x)
    assert float((ours - theirs).abs().max() / ours.abs().max()) < 1e-5
    assert main(["export", str(run), "-o", str(tmp_path / "vp")]) == 0  # default: visionpeft's own files
    assert sorted(p.name for p in (tmp_path / "vp").iterdir()) == ["adapter.json", "adapter.safetensors"]
    copied, saved = tmp_path / "vp" / "adapter.safetensors", run / "adapter" / "adapter.safetensors"
    assert copied.read_bytes() == saved.read_bytes()


def test_export_bad_input_is_one_line_exit_2(tmp_path, capsys):
    run = _train(tmp_path, [{"method": "ssf"}, {"method": "head"}])
    cases = [
        (["export", str(run), "--format", "peft", "-o", str(tmp_path / "p")], r"strategies\.0 \(ssf\) has no exact"),
        (["export", str(run), "--format", "onnx", "-o", str(tmp_path / "p")], "export --format onnx"),
        (["export", str(tmp_path / "toy"), "--format", "peft", "-o", str(tmp_path / "p")], "not a run directory"),
        (["export", str(run), "-o", str(run)], "is a folder that is not empty"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("visionpeft: error: ")
        assert re.search(message, err), err
    assert not (tmp_path / "p").exists()


def test_export_detection_run_for_peft(shared, tmp_path, capsys):
    """A 1-epoch conv-LoRA + head run of the COCO-backbone YOLOv5nu on coco8: PEFT on the plain base the run
    started from computes what the run's model computes."""
    from tests.tasks.ultralytics_support import copy_dataset
    from visionpeft.safe_yaml import load_yaml_file
    from visionpeft.tasks.ultralytics.data import check_data
    from visionpeft.tasks.ultralytics.merge import build_training_model, load_run_model

    data = copy_dataset(shared, "coco8", tmp_path)
    recipe = tmp_path / "det.yaml"
    recipe.write_text(
        f"task: detection\nname: tiny\nmodel: {shared / 'weights' / 'yolov5nu-cocobackbone.pt'}\ndata: {data}\n"
        f"output: {tmp_path / 'runs'}\nstrategies: [{{method: lora, rank: 4}}, {{method: head}}]\n"
        "ultralytics: {epochs: 1, imgsz: 64, batch: 2, nbs: 2, warmup_epochs: 0, workers: 0, device: cpu, "
        "amp: false}\n")
    assert main(["train", str(recipe)]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert main(["export", str(run), "--format", "peft", "-o", str(tmp_path / "peft")]) == 0
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["modules_to_save"]
    doc = load_yaml_file(run / "recipe.yaml", "test")
    info = check_data(doc["data"], check_labels=False, task="detect")
    base = build_training_model(str(doc["model"]), info.nc, info.names)
    loaded = peft.PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    model = load_run_model(run)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    plain = build_training_model(str(doc["model"]), info.nc, info.names).eval()
    with torch.no_grad():
        ours, theirs, before = (_raw(m(x)) for m in (model, loaded, plain))
    for a, b in zip(ours, theirs):
        assert float((a - b).abs().max() / a.abs().max()) < 1e-5
    assert any(not torch.allclose(a, b, rtol=0, atol=1e-4 * float(a.abs().max())) for a, b in zip(ours, before))


def _raw(y) -> list[torch.Tensor]:
    """Raw class scores, box distributions and head inputs (decoded boxes are dominated by anchor offsets)."""
    raw = y[1]
    return [raw["scores"], raw["boxes"], *raw["feats"]]
