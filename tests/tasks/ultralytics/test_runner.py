"""The detection task through the CLI (train, bad inputs) and through Ultralytics' own ``YOLO.train`` API."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ultralytics")

from visionpeft.cli import main  # noqa: E402
from visionpeft.tasks import get_task  # noqa: E402
from visionpeft.tasks.ultralytics.trainer import PeftDetectionTrainer  # noqa: E402

from ..ultralytics_support import copy_dataset, offline_args  # noqa: E402

TINY = ["ultralytics.epochs=1", "ultralytics.imgsz=64", "ultralytics.batch=2", "ultralytics.nbs=2",
        "ultralytics.warmup_epochs=0", "ultralytics.workers=0", "ultralytics.device=cpu", "ultralytics.amp=false"]


@pytest.fixture()
def recipe(shared, tmp_path):
    data = copy_dataset(shared, "coco8", tmp_path)
    path = tmp_path / "det.yaml"
    path.write_text(
        "task: detection\nname: tiny\n"
        f"model: {shared / 'weights' / 'yolov5nu-cocobackbone.pt'}\ndata: {data}\noutput: {tmp_path / 'runs'}\n"
        "strategies: [{method: lora, rank: 4}, {method: head}]\nultralytics: {epochs: 30}\n"
    )
    return path


def test_task_registry():
    task = get_task("detection")
    assert task.primary_metric == "map50_95" and {"map50", "map50_95"} <= set(task.metric_names)


def test_cli_train_writes_the_run_dir(recipe, tmp_path, capsys):
    assert main(["train", str(recipe), *TINY]) == 0
    assert "[tiny] map50=" in capsys.readouterr().out
    (run,) = (tmp_path / "runs").iterdir()
    for name in ("recipe.yaml", "metrics.json", "plan.json", "adapter/adapter.json", "adapter_last/adapter.json",
                 "weights/best.pt", "weights/merged.pt", "results.csv"):
        assert (run / name).exists(), name
    assert list(run.glob("events.out.tfevents.*"))  # TensorBoard events in the run dir: the run is named after it
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["strategy"] == "tiny" and set(metrics["metrics"]) >= {"map50", "map50_95"}
    assert 0 < metrics["trainable_params"] < metrics["total_params"] and metrics["step_time_s"] > 0
    assert metrics["peak_mem_mb"] > 0 and metrics["adapter_bytes"] > 0
    assert "epochs: 1" in (run / "recipe.yaml").read_text()  # the resolved recipe records the overrides


def test_cli_bad_inputs_exit_2_with_one_line(recipe, tmp_path, capsys, shared):
    label = tmp_path / "coco8" / "labels" / "train" / "000000000009.txt"
    lines = label.read_text().splitlines()
    original = label.read_text()
    label.write_text("\n".join([lines[0], "99 0.5 0.5 0.1 0.1", *lines[1:]]) + "\n")
    assert main(["train", str(recipe), *TINY]) == 2
    err = capsys.readouterr().err
    assert f"{label}:2: class id 99 out of range" in err and "Traceback" not in err
    label.write_text(original)
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x00" * 64)
    assert main(["train", str(recipe), f"model={bad}", *TINY]) == 2
    assert "not an Ultralytics checkpoint" in capsys.readouterr().err
    assert main(["train", str(recipe), "ultralytics.lr=0.1"]) == 2
    assert "did you mean 'lr0'" in capsys.readouterr().err
    for size in ("100000", "16", "[640,100000]"):
        assert main(["train", str(recipe), f"ultralytics.imgsz={size}"]) == 2
        err = capsys.readouterr().err
        assert "ultralytics.imgsz: expected an image size of 32..8192 pixels" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_failed_start_leaves_no_run_dir(recipe, tmp_path, capsys, monkeypatch):
    """A start that fails before its first epoch ends (here: out of memory) leaves no run directory."""
    import visionpeft.tasks.ultralytics.runner as runner

    def out_of_memory(trainer):
        raise MemoryError("Insufficient memory")

    from visionpeft.recipe import load_recipe

    monkeypatch.setattr(runner, "_train", out_of_memory)
    r = load_recipe(recipe, TINY)
    with pytest.raises(MemoryError):
        get_task("detection").train(r, list(r.strategies), tmp_path / "runs" / "x", "x")
    assert not (tmp_path / "runs" / "x").exists()


def test_yolo_train_api_with_trainer_subclass(shared, tmp_path):
    from ultralytics import YOLO

    import visionpeft

    data = copy_dataset(shared, "coco8", tmp_path)
    yolo = YOLO(str(shared / "weights" / "yolov5nu-cocobackbone.pt"))
    trainer = PeftDetectionTrainer.configure([{"method": "freeze", "n": 10}, {"method": "lora", "rank": 4},
                                              {"method": "head"}])
    args = offline_args(tmp_path, name="api")
    args.pop("project")
    yolo.train(trainer=trainer, data=str(data), project=str(tmp_path), **args)
    plan = visionpeft.get_plan(yolo.model)  # Ultralytics reloaded best.pt: the adapted model
    assert plan is not None and plan.strategies == ["freeze", "lora", "head"]
    merged = YOLO(str(tmp_path / "api" / "weights" / "merged.pt"))
    assert visionpeft.get_plan(merged.model) is None
    result = merged.predict(str(data.parent / "images" / "val"), imgsz=64, device="cpu", verbose=False)
    assert len(result) == 4
