"""Issue 23 #6: every device setting, in both tasks and every form, is checked against the machine before any
work starts, with one line naming the setting and what the machine has."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from visionpeft.cli import main
from visionpeft.devices import check_device, torch_device
from visionpeft.errors import ConfigError
from visionpeft.recipe import load_recipe


@pytest.fixture
def one_gpu(monkeypatch):
    """Pretend this machine has one CUDA device (the check reads only these two functions)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("value", ["cuda", "cuda:0", "0", 0, -1, "-1", [0], "cpu", "auto", None, " cuda:0 "])
def test_forms_a_one_gpu_machine_has(one_gpu, value):
    check_device(value, "x.device")


@pytest.mark.parametrize(("value", "what"), [
    ("cuda:1", "there is no GPU 1; this machine has cpu, cuda:0"), ("1", "there is no GPU 1"), (1, "there is no GPU 1"),
    ("0,1", "there is no GPU 1"), ([0, 1], "there is no GPU 1"), ("cuda:0,3", "there is no GPU 3"),
    ("mps", "no MPS device here; this machine has cpu, cuda:0"),
    ("gpu", "expected cpu, mps, cuda"), (True, "expected cpu"), (0.5, "expected cpu"), (-2, "expected cpu"),
    ([], "expected cpu"), (["0"], "expected cpu"), ("cuda:x", "expected cpu"),
])
def test_forms_a_one_gpu_machine_lacks(one_gpu, value, what):
    with pytest.raises(ConfigError) as info:
        check_device(value, "x.device")
    assert str(info.value).startswith(f"x.device={value}: ") and what in str(info.value)


@pytest.mark.parametrize("value", ["cuda", "cuda:0", "0", 0, -1, "0,1", [0, 1], "mps"])
def test_no_gpu_machine(no_gpu, value):
    with pytest.raises(ConfigError, match=r"no (CUDA|MPS) device here; this machine has cpu$"):
        check_device(value, "x.device")


def test_one_device_per_classification_process(one_gpu):
    assert torch_device("cuda:0", "train.device") == torch.device("cuda", 0)
    assert torch_device(0, "train.device") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="one device per process here; for several GPUs launch with torchrun"):
        torch_device("0,0", "train.device")


def test_recipes_refuse_unknown_forms_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.device: .*expected cpu, mps, cuda"):
        load_recipe("recipes/quickstart.yaml", ["train.device=gpu"])
    with pytest.raises(ConfigError, match=r"train\.device: .*one device per process"):
        load_recipe("recipes/quickstart.yaml", ["train.device=[0, 1]"])
    assert load_recipe("recipes/quickstart.yaml", ["train.device=0"]).train.device == 0  # form fine; machine later
    # null (an empty override) is auto, as ultralytics.device= is (was a two-part union error for str and int)
    assert load_recipe("recipes/quickstart.yaml", ["train.device="]).train.device == "auto"
    assert torch_device(" CPU ", "train.device") == torch.device("cpu")
    pytest.importorskip("ultralytics")
    with pytest.raises(ConfigError, match=r"ultralytics\.device: Ultralytics has no 'auto'"):
        load_recipe("recipes/detection/bitfit.yaml", ["ultralytics.device=auto"])


def _one_line(capsys, argv) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("visionpeft:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "0", "-1", "mps"])
def test_classification_train_stops_before_any_work(no_gpu, tmp_path, capsys, device):
    from visionpeft.data.toy import make_toy_imagefolder

    toy = make_toy_imagefolder(tmp_path / "toy", classes=2, train_per_class=2, val_per_class=1, size=8)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "d", "model": "test_efficientnet", "data": str(toy),
                                      "output": str(tmp_path / "runs"), "strategies": [{"method": "head"}],
                                      "train": {"epochs": 1, "workers": 0, "progress": False}}))
    line = _one_line(capsys, ["train", recipe, f"train.device={device}"])
    assert f"train.device={device}: no " in line and "this machine has cpu" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("device", ["0", "0,1", "cuda:1", "-1", "[0, 1]", "mps"])
def test_detection_train_stops_before_any_work(no_gpu, tmp_path, capsys, device):
    pytest.importorskip("ultralytics")
    recipe = tmp_path / "det.yaml"
    # The data does not exist: a device check that ran after the data check would name the data instead.
    recipe.write_text(f"task: detection\nname: d\nmodel: yolov8n.yaml\ndata: {tmp_path / 'missing.yaml'}\n"
                      f"output: {tmp_path / 'runs'}\nstrategies: [{{method: head}}]\n")
    line = _one_line(capsys, ["train", recipe, f"ultralytics.device={device}"])
    assert "ultralytics.device=" in line and "this machine has cpu" in line, line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_predict_device_is_checked(no_gpu, tmp_path: Path, capsys):
    line = _one_line(capsys, ["predict", tmp_path, "source=x.jpg", "device=cuda:0"])
    assert "device=cuda:0: no CUDA device here; this machine has cpu" in line
