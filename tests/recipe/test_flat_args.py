"""Recipe-less command lines in the users' own words (``model=yolo11n.pt data=coco8.yaml freeze=10 epochs=5``) and
flat keys over a recipe: what recipe each line means, and the one-line refusals."""

from __future__ import annotations

import json

import pytest

from visionpeft.errors import ConfigError
from visionpeft.recipe.loader import load_cli_recipe


def _yolo(*items, command="train"):
    return load_cli_recipe(["model=yolov8n.yaml", "data=coco8.yaml", *items], command)


def test_ultralytics_keys_go_to_ultralytics_and_visionpeft_keys_to_the_recipe(tmp_path):
    r = _yolo("epochs=5", "imgsz=320", "batch=8", "lr0=0.02", "optimizer=SGD", "device=cpu", "mosaic=0.5",
              f"project={tmp_path}", "name=exp", "seed=3", "freeze=[0,3]", "strategies=lora,head")
    assert r.task == "detect" and r.output == str(tmp_path) and r.name == "exp" and r.seed == 3
    assert {k: r.ultralytics[k] for k in ("epochs", "imgsz", "batch", "lr0", "optimizer", "device", "mosaic")} == {
        "epochs": 5, "imgsz": 320, "batch": 8, "lr0": 0.02, "optimizer": "SGD", "device": "cpu", "mosaic": 0.5}
    assert [s["method"] for s in r.strategies] == ["freeze", "lora", "head"] and r.strategies[0]["n"] == [0, 3]


@pytest.mark.parametrize(("items", "methods", "name"), [
    ([], ["full"], "coco8-full"),                                        # as yolo train: everything trains
    (["freeze=10"], ["freeze"], "coco8-freeze10"),
    (["freeze=0"], ["full"], "coco8-full"),                              # Ultralytics' freeze=0 freezes nothing
    (["strategies=[{method: lora, rank: 16}, head]", "strategies.0.alpha=32"], ["lora", "head"], "coco8-lora-head"),
])
def test_strategies_from_freeze_and_strategies(items, methods, name):
    r = _yolo(*items)
    assert [s["method"] for s in r.strategies] == methods and r.name == name
    if "strategies.0.alpha=32" in items:
        assert (r.strategies[0]["rank"], r.strategies[0]["alpha"]) == (16, 32)


@pytest.mark.parametrize(("model", "task"), [("yolov8n-seg.yaml", "segment"), ("yolo11n-pose.yaml", "pose"),
                                             ("yolov8n-obb.yaml", "obb"), ("yolo11n-cls.yaml", "classify"),
                                             ("yolo26n.yaml", "detect")])
def test_the_task_is_the_models(model, task):
    data = "some/folder" if task == "classify" else "coco8.yaml"
    assert load_cli_recipe([f"model={model}", f"data={data}"]).task == task


def test_flat_keys_override_a_recipe():
    r = load_cli_recipe(["detection/lora", "epochs=5", "freeze=10", "imgsz=96", "data=coco8.yaml"])
    assert r.ultralytics["epochs"] == 5 and r.ultralytics["imgsz"] == 96
    assert [s["method"] for s in r.strategies] == ["freeze", "lora", "head"] and r.strategies[0]["n"] == 10
    assert r.name == "coco8-freeze10-lora-head"  # named after what it is, not after the recipe (bccd)
    # a recipe's own freeze entry is replaced, keeping its other settings
    r = load_cli_recipe(["detection/lora_freeze", "freeze=5"])
    assert [(s["method"], s.get("n")) for s in r.strategies][0] == ("freeze", 5)


@pytest.mark.parametrize(("items", "match"), [
    (["epochz=5"], r"^epochz=: not a visionpeft or Ultralytics argument; did you mean epochs=\?"),
    (["freze=3"], r"freze=: .*did you mean freeze=\?"),
    (["lr=0.01"], r"^lr=: .*did you mean lr0=\?"),                  # another trainer's word for Ultralytics' key
    (["mode=val"], r"^mode=: set by visionpeft"),
    (["resume=true"], r"visionpeft resume RUN_DIR"),
    (["epochs=abc"], r"ultralytics: 'epochs=abc' .*must be an int"),  # Ultralytics' own check_cfg
    (["imgsz=10000"], r"ultralytics.imgsz"),
    (["freeze=-1"], r"^freeze=-1: expected a number of leading layers"),
    (["freeze=true"], r"^freeze=true: expected"),
    (["strategies=[{method: lora, rnak: 4}]"], r"strategies.0"),
    (["lr0=true"], r"expected a number"),
])
def test_bad_flat_keys_are_one_line(items, match):
    with pytest.raises(ConfigError, match=match):
        _yolo(*items)


def test_pretrained_false_on_a_checkpoint_is_refused():
    with pytest.raises(ConfigError, match=r"pretrained=false: the model .*holds its weights.*model=yolo11n.yaml"):
        load_cli_recipe(["model=/x/best.pt", "data=coco8.yaml", "task=detect", "pretrained=false"])
    r = load_cli_recipe(["model=yolov8n-seg.yaml", "data=coco8-seg.yaml", "pretrained=yolov8n.pt"])
    assert r.pretrained == "yolov8n.pt"


def test_missing_model_or_data_is_one_line():
    with pytest.raises(ConfigError, match=r"^model= and data= missing"):
        load_cli_recipe(["epochs=3"])
    with pytest.raises(ConfigError, match=r"^data= missing"):
        load_cli_recipe(["model=yolov8n.yaml"])
    with pytest.raises(ConfigError, match=r"expected key=value .*only the first argument may name a recipe"):
        load_cli_recipe(["detection/lora", "epochs=3", "extra"])


def test_timm_words(tmp_path):
    r = load_cli_recipe(["model=vit_tiny_patch16_224", f"data={tmp_path}", "strategies=lora,head", "epochs=3",
                         "batch=16", "imgsz=64", "lr0=1e-3", "optimizer=SGD", "fliplr=0", "device=cpu",
                         "grad_accum=2", "amp=false", "patience=4", f"project={tmp_path / 'runs'}"])
    assert r.task == "classification" and r.pretrained is True  # no weights given: timm's pretrained ones
    got = (r.train.epochs, r.train.batch_size, r.augment.img_size, r.optim.lr, r.optim.name)
    assert got == (3, 16, 64, 1e-3, "sgd")
    got = (r.augment.hflip, r.train.device, r.train.grad_accum, r.train.amp, r.train.patience)
    assert got == (0, "cpu", 2, "off", 4)
    assert r.name == f"{tmp_path.name}-lora-head" and r.output == str(tmp_path / "runs")
    with pytest.raises(ConfigError, match=r"^mosaic=: an Ultralytics argument, and vit_tiny_patch16_224 is a timm"):
        load_cli_recipe(["model=vit_tiny_patch16_224", f"data={tmp_path}", "mosaic=0"])


def test_a_timm_weights_file_names_its_architecture(tmp_path, shared):
    weights = shared / "weights" / "vit_tiny_patch16_224.in1k.safetensors"
    r = load_cli_recipe([f"model={weights}", f"data={tmp_path}"])
    assert (r.model, r.weights, r.pretrained) == ("vit_tiny_patch16_224", str(weights), False)
    merged = tmp_path / "model.safetensors"  # a 'visionpeft merge' output: its sidecar names the architecture
    merged.write_bytes(b"x")
    merged.with_suffix(".json").write_text(json.dumps({"timm_model": "resnet18"}))
    assert load_cli_recipe([f"model={merged}", f"data={tmp_path}"]).model == "resnet18"
    anon = tmp_path / "weights.safetensors"
    anon.write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"does not say its architecture; .*model=vit_tiny_patch16_224 weights="):
        load_cli_recipe([f"model={anon}", f"data={tmp_path}"])


def test_recipe_less_compare_sets(tmp_path, shared):
    r = load_cli_recipe([f"model={shared / 'weights' / 'yolov5nu-cocobackbone.pt'}", "data=coco8.yaml", "epochs=1"],
                        "compare")
    runs = r.compare_runs()
    assert list(runs) == ["full", "freeze10", "lora_head", "head"]  # YOLOv5u's backbone is model.0-9
    assert runs["freeze10"] == [{"method": "freeze", "n": 10, "patterns": [], "unfreeze": [], "bn": "eval"}]
    assert list(load_cli_recipe(["model=yolo11n.yaml", "data=coco8.yaml"], "compare").compare_runs())[1] == "freeze11"
    timm_runs = load_cli_recipe(["model=vit_tiny_patch16_224", f"data={tmp_path}"], "compare").compare_runs()
    assert list(timm_runs) == ["full", "lora_head", "head"]
    given = load_cli_recipe(["model=yolo11n.yaml", "data=coco8.yaml", "freeze=10"], "compare")
    assert list(given.compare_runs()) == ["full", "freeze10"] and given.name == "coco8-compare"


def test_resume_takes_the_same_flat_words():
    from visionpeft.recipe.flat import to_dotted

    assert to_dotted(["device=cpu", "workers=0", "ultralytics.batch=4", "seed=1", "project=p"], True) == [
        "ultralytics.device=cpu", "ultralytics.workers=0", "ultralytics.batch=4", "seed=1", "output=p"]
    assert to_dotted(["device=cpu", "batch=8", "freeze=3"], False) == [
        "train.device=cpu", "train.batch_size=8", "strategies=3"]  # what trains is refused by resume itself
    with pytest.raises(ConfigError, match=r"^workerz=: .*did you mean workers=\?"):
        to_dotted(["workerz=0"], True)


def test_a_bare_ultralytics_name_is_its_checkpoint():
    # yolo train model=yolo11n reads yolo11n.pt; offline and not on disk: the one line naming that download
    download = r"yolo11n\.pt is not a local file, so Ultralytics would download .*yolo11n\.pt"
    with pytest.raises(ConfigError, match=download):
        load_cli_recipe(["model=yolo11n", "data=coco8.yaml"])
    assert load_cli_recipe(["model=yolo11n", "data=coco8.yaml", "task=detect"]).model == "yolo11n.pt"
