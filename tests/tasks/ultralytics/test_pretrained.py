"""Task models on another task's checkpoint through Ultralytics' own ``pretrained`` (recipe key ``pretrained``).

The shipped segment recipe (``models/yolov5nu-seg.yaml`` + ``pretrained: ../shared/weights/yolov5nu-cocobackbone.pt``)
trains on a fresh clone, and the model it trains from is the one plain Ultralytics trains from
(``yolo segment train model=yolov5nu-seg.yaml pretrained=... freeze=10``): same tensors transferred by name and
shape, the same trainable set. Also the recipe rules for the key, and the one line an old recipe naming a checkpoint
of the removed transfer command gets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("ultralytics")

import visionpeft  # noqa: E402
from visionpeft.backends.ultralytics import build_model  # noqa: E402
from visionpeft.cli import main  # noqa: E402
from visionpeft.errors import ConfigError  # noqa: E402
from visionpeft.packaged import ASSETS  # noqa: E402
from visionpeft.recipe import parse_recipe  # noqa: E402
from visionpeft.tasks.ultralytics.merge import rebuild_from_adapter  # noqa: E402

from ..ultralytics_support import capture_setup, copy_dataset, ultralytics_setup  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
ARGS = dict(epochs=1, imgsz=64, batch=4, nbs=4, warmup_epochs=0, workers=0, device="cpu", amp=False,
            fraction=0.05, optimizer="SGD", lr0=0.01)


def _transferred(state: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> list[str]:
    """Ultralytics' rule (``intersect_dicts``): the source tensors whose name and shape the model has."""
    return [k for k, v in source.items() if k in state and state[k].shape == v.shape]


def test_shipped_segment_recipe_trains_from_the_tensors_plain_ultralytics_transfers(shared, tmp_path, monkeypatch):
    data = copy_dataset(shared, "package-seg-small", tmp_path)  # Ultralytics writes label caches beside the data
    ckpt = shared / "weights" / "yolov5nu-cocobackbone.pt"
    plain = ultralytics_setup(str(ASSETS / "models" / "yolov5nu-seg.yaml"), tmp_path / "plain", data=str(data),
                              pretrained=str(ckpt), freeze=10, **ARGS)
    seen = capture_setup(monkeypatch)
    monkeypatch.chdir(REPO)  # the shipped recipes name ../shared relative to the repository root
    overrides = [f"data={data}", f"output={tmp_path / 'runs'}"] + [f"ultralytics.{k}={json.dumps(v)}"
                                                                      for k, v in ARGS.items()]
    assert main(["train", "segment/freeze", *overrides]) == 0

    coco = build_model(ckpt).state_dict()
    ours, theirs = seen["state"], plain["state"]
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    moved = _transferred(ours, coco)
    assert moved == _transferred(theirs, coco)
    body = [k for k in coco if int(k.split(".")[1]) < 24]  # backbone + neck, layers 0-23
    assert len(body) == 342 and set(body) <= set(moved)
    # Ultralytics logs "Transferred 421/489 items" in both runs (1 class: the class convs' last layers differ in
    # shape); every tensor it takes equals the checkpoint's, in both runs.
    assert (len(moved), len(ours)) == (421, 489)
    for k in moved:
        assert torch.equal(ours[k], coco[k].float()) and torch.equal(theirs[k], coco[k].float()), k
    assert seen["trainable"] == plain["trainable"]  # {method: freeze, n: 10} is Ultralytics' freeze=10

    (run_dir,) = (tmp_path / "runs").iterdir()
    recorded = (run_dir / "recipe.yaml").read_text()
    assert f"pretrained: {ckpt}" in recorded and str(ASSETS / "models" / "yolov5nu-seg.yaml") in recorded
    # Base rebuilt from the recorded yaml + pretrained, the adapter on top: its fingerprint of every frozen tensor
    # (layers 0-9, from the checkpoint) holds, else load_adapter raises.
    assert set(visionpeft.get_plan(rebuild_from_adapter(run_dir)).trainable) == plain["trainable"]
    # A run directory written before: its recipe names a checkpoint of the removed transfer command, now gone.
    # eval (like predict and merge) reads the run's own weights/best.pt, never the base.
    old = recorded.replace(f"pretrained: {ckpt}", "pretrained: null").replace(
        str(ASSETS / "models" / "yolov5nu-seg.yaml"), str(tmp_path / "gone" / "yolov5nu-seg-cocobackbone.pt"))
    (run_dir / "recipe.yaml").write_text(old)
    reported = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert main(["eval", str(run_dir)]) == 0
    assert json.loads((run_dir / "eval_val.json").read_text()) == reported


BASE = {"task": "segment", "data": "d.yaml"}


def test_pretrained_goes_with_a_model_yaml():
    recipe = parse_recipe({**BASE, "model": "models/yolov5nu-seg.yaml", "pretrained": "yolo11n"})
    assert recipe.pretrained == "yolo11n.pt"  # a bare Ultralytics name, as `yolo train pretrained=yolo11n`
    assert parse_recipe({**BASE, "model": "yolo11n-seg.pt"}).pretrained is None
    with pytest.raises(ConfigError, match=r"pretrained: w\.pt goes with a model yaml .*the model yolo11n-seg\.pt "
                                          "already holds its weights"):
        parse_recipe({**BASE, "model": "yolo11n-seg.pt", "pretrained": "w.pt"})
    with pytest.raises(ConfigError, match=r"pretrained: expected an Ultralytics '\.pt' checkpoint"):
        parse_recipe({**BASE, "model": "yolo11n-seg.yaml", "pretrained": "w.safetensors"})
    with pytest.raises(ConfigError, match=r"ultralytics\.pretrained: set by visionpeft; use the top-level "
                                          "'pretrained' key"):
        parse_recipe({**BASE, "model": "yolo11n-seg.yaml", "ultralytics": {"pretrained": "w.pt"}})


@pytest.mark.parametrize(("task", "kind"), [("segment", "seg"), ("pose", "pose"), ("obb", "obb")])
def test_a_checkpoint_of_the_removed_transfer_command_says_what_to_write(task, kind, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: {task}\nmodel: weights/yolov5nu-{kind}-cocobackbone.pt\ndata: {tmp_path}/d.yaml\n"
                      f"output: {tmp_path / 'runs'}\nstrategies: [{{method: head}}]\n")
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"weights/yolov5nu-{kind}-cocobackbone.pt does not exist" in err
    assert (f"write 'model: models/yolov5nu-{kind}.yaml' and 'pretrained: ../shared/weights/yolov5nu-cocobackbone.pt'"
            in err)
    assert not any((tmp_path / "runs").rglob("*"))  # nothing started

