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
