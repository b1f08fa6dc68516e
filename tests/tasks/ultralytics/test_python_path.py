"""The Python path for YOLO users: ``visionpeft.apply(yolo, ...)`` then ``yolo.train(...)`` trains exactly the plan,
refusals are one line before any data is read, and a run written through ``YOLO(...).train(trainer=...)`` is a
visionpeft run directory that ``eval`` / ``predict`` / ``merge`` / ``resume`` accept."""

from __future__ import annotations

import json

import pytest
import torch

import visionpeft
from visionpeft import cli
from visionpeft.errors import ConfigError

from ..ultralytics_support import copy_dataset, killed_after_first_epoch, offline_args

STRATEGIES = [{"method": "lora", "rank": 4, "alpha": 8}, {"method": "head"}]


def _adapted_yolo(weights):
    """A YOLO object adapted with STRATEGIES, every LoRA B perturbed (a trained adapter, not a zero one)."""
    from ultralytics import YOLO

    yolo = YOLO(weights)
    plan = visionpeft.apply(yolo, STRATEGIES)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in yolo.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    state = {k: v.detach().clone() for k, v in yolo.model.state_dict().items()}
    return yolo, plan, state


def _train(yolo, data, project, **args):
    """``yolo.train`` recording the trainer's model before its first step and after its last."""
    seen = {}

    def start(tr):
        seen["start"] = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
        seen["trainable"] = {n for n, p in tr.model.named_parameters() if p.requires_grad}

    def end(tr):
        seen["end"] = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
        seen["trainer"] = tr

    yolo.add_callback("on_pretrain_routine_end", start)
    yolo.add_callback("on_train_end", end)
    yolo.train(data=str(data), **offline_args(project, **args))
    return seen


@pytest.fixture(scope="module")
def same_classes(coco8, weights, tmp_path_factory):
    project = tmp_path_factory.mktemp("python-path")
    yolo, plan, before = _adapted_yolo(weights)
    seen = _train(yolo, coco8, project, name="same")
    return yolo, plan, before, seen


def test_yolo_train_after_apply_trains_the_plan(same_classes):
    yolo, plan, before, seen = same_classes
    assert seen["start"].keys() == before.keys()
    for key, value in before.items():  # the first step starts from the user's model, adapters included
        assert torch.equal(seen["start"][key], value), key
    trainable = set(plan.trainable)
    assert seen["trainable"] == trainable
    changed = {k for k in trainable if not torch.equal(seen["end"][k], before[k])}
    assert changed and any("lora_B" in k for k in changed)
    frozen = [k for k in before if k not in trainable and before[k].is_floating_point() and "running_" not in k]
    for key in frozen:  # the base stays bit-identical
        assert torch.equal(seen["end"][key], before[key]), key
    after = visionpeft.get_plan(yolo.model)  # the YOLO object now holds the trained, still adapted model
    assert after is not None and after.trainable_count == plan.trainable_count
    assert seen["trainer"].vp_plan.trainable_count == plan.trainable_count


def test_yolo_train_after_apply_writes_a_run_directory(same_classes, coco8):
    run = same_classes[3]["trainer"].save_dir
    for name in ("adapter/adapter.safetensors", "weights/merged.pt", "recipe.yaml", "metrics.json", "plan.json"):
        assert (run / name).is_file(), name
    recipe = visionpeft.recipe.load_recipe(run / "recipe.yaml")
    assert recipe.task == "detect" and recipe.data == str(coco8.resolve()) and recipe.output == str(run.parent)
    assert [s["method"] for s in recipe.strategies] == ["lora", "head"]
    assert recipe.ultralytics["imgsz"] == 64 and "project" not in recipe.ultralytics


def test_another_class_count_keeps_the_adapters_and_renews_the_head(shared, weights, tmp_path):
    from visionpeft.tasks.ultralytics.merge import build_training_model

    data = copy_dataset(shared, "coco8", tmp_path / "data")
    data.write_text("train: images/train\nval: images/val\nnames: [a, b, c]\n")  # ids folded to 0..2 below
    for label in (data.parent / "labels").rglob("*.txt"):
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()]
        label.write_text("".join(" ".join([str(int(r[0]) % 3), *r[1:]]) + "\n" for r in rows))
    yolo, plan, before = _adapted_yolo(weights)
    seen = _train(yolo, data, tmp_path / "runs", name="three", epochs=1)
    start = seen["start"]
    assert yolo.model.model[-1].nc == 3
    carried = [k for k in before if k in start and start[k].shape == before[k].shape]
    renewed = [k for k in start if k not in carried]
    assert renewed and all(".cv3." in k for k in renewed)  # only the class branch of the head
    for key in carried:
        assert torch.equal(start[key], before[key]), key
    assert any("lora_B" in k for k in carried)
    fresh = visionpeft.apply(build_training_model(weights, 3, {0: "a", 1: "b", 2: "c"}), STRATEGIES)
    assert seen["trainer"].vp_plan.trainable_count == fresh.trainable_count


@pytest.mark.parametrize("kwargs, says", [
    ({"trainer": "TRAINER"}, "leave trainer= out"),
    ({"resume": True}, "visionpeft resume RUN_DIR"),
    ({"pretrained": "other.pt"}, "load the weights before adapting"),
    ({"pretrained": False}, "load the weights before adapting"),
    ({"freeze": 10}, "{method: freeze, n: N}"),
    ({"data": ["a.yaml", "b.yaml"]}, "one data set per train() call"),
])
def test_refusals_are_one_line_before_any_data_is_read(weights, tmp_path, kwargs, says):
    from ultralytics import YOLO

    from visionpeft.tasks.ultralytics.trainer import PeftDetectionTrainer

    yolo = YOLO(weights)
    visionpeft.apply(yolo, STRATEGIES)
    if kwargs.get("trainer") == "TRAINER":
        kwargs = {"trainer": PeftDetectionTrainer.configure([{"method": "head"}])}
    args = {"data": "missing.yaml", **offline_args(tmp_path / "runs"), **kwargs}
    with pytest.raises(ConfigError) as err:
        yolo.train(**args)
    assert says in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_apply_to_the_inner_model_or_by_load_adapter_attaches_too(same_classes, weights):
    from ultralytics import YOLO

    yolo = YOLO(weights)
    visionpeft.apply(yolo.model, STRATEGIES)  # the network, not the object: found from the network
    assert "train" in vars(yolo)
    loaded = YOLO(weights)
    visionpeft.load_adapter(loaded, same_classes[3]["trainer"].save_dir / "adapter")
    assert "train" in vars(loaded)
    visionpeft.merge(loaded)  # merged: a plain model, Ultralytics' own train() (no refusal of trainer=)
    assert visionpeft.get_plan(loaded.model) is None
    plain = YOLO(weights)
    visionpeft.apply(plain.model.__class__(plain.model.yaml, verbose=False), STRATEGIES)  # in no YOLO object
    assert "train" not in vars(plain)


def test_python_trainer_run_is_a_visionpeft_run_directory(coco8, weights, tmp_path, monkeypatch):
    """``YOLO(...).train(trainer=visionpeft.PeftDetectionTrainer.configure([...]))``, killed after its first epoch:
    ``visionpeft resume`` finishes it; ``eval``, ``predict`` and ``merge`` read it."""
    from ultralytics import YOLO

    import visionpeft.tasks.ultralytics.trainer as trainer_mod

    original = killed_after_first_epoch(monkeypatch)
    trainer = visionpeft.PeftDetectionTrainer.configure(STRATEGIES)
    with pytest.raises(KeyboardInterrupt):
        YOLO(weights).train(trainer=trainer, data=str(coco8), **offline_args(tmp_path / "runs", name="py", epochs=2))
    monkeypatch.setattr(trainer_mod, "make_callbacks", original)
    run = tmp_path / "runs" / "py"
    assert (run / "recipe.yaml").is_file() and (run / "weights" / "last.pt").is_file()
    assert not (run / "metrics.json").exists()
    assert cli.main(["resume", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text())["extra"]["epochs"] == 2
    assert cli.main(["eval", str(run)]) == 0
    assert (run / "eval_val.json").is_file()
    assert cli.main(["predict", str(run), f"source={coco8.parent / 'images' / 'val'}"]) == 0
    assert cli.main(["merge", str(run), "-o", str(tmp_path / "merged.pt")]) == 0
    assert (tmp_path / "merged.pt").is_file()


def test_trainers_are_top_level_names():
    from visionpeft import PeftDetectionTrainer, PeftRTDETRTrainer, trainer_for
    from visionpeft.tasks.ultralytics import trainer as trainer_mod

    assert PeftDetectionTrainer is trainer_mod.PeftDetectionTrainer is trainer_for("detect")
    assert PeftRTDETRTrainer is trainer_for("detect", rtdetr=True)
    for cls in trainer_mod.TRAINERS.values():
        assert getattr(visionpeft, cls.__name__) is cls and cls.__name__ in visionpeft.__all__
