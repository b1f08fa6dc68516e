"""The YOLO user's own line, ``visionpeft train model=yolo11n.pt data=coco8.yaml freeze=10 epochs=5``: offline it is one
line naming the download; with local files it trains what plain Ultralytics' ``freeze=10`` trains; flat keys reach
Ultralytics' ``args.yaml``; ``visionpeft compare`` without a recipe compares the default set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.tasks.ultralytics_support import copy_dataset, ultralytics_setup
from visionpeft.cli import main

QUICK = ["imgsz=64", "batch=2", "nbs=2", "warmup_epochs=0", "workers=0", "device=cpu", "amp=false", "epochs=1"]


def test_the_request_line_offline_is_one_line_naming_the_download(tmp_path):
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(tmp_path / "cfg")}
    run = subprocess.run([sys.executable, "-m", "visionpeft", "train", "model=yolo11n.pt", "data=coco8.yaml",
                          "freeze=10", "epochs=5"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    errors = [line for line in run.stderr.splitlines() if line.startswith("visionpeft: error:")]
    assert run.returncode == 2 and "Traceback" not in run.stderr and len(errors) == 1, run.stderr
    assert "https://github.com/ultralytics/assets/releases/download/" in errors[0] and "yolo11n.pt" in errors[0]
    assert "model=path/to/yolo11n.pt" in errors[0]
    assert not any(tmp_path.glob("runs")), "nothing is written before the model is there"
    # with the task given, the run reaches the runner (which makes the runs folder) before the model fails
    run = subprocess.run([sys.executable, "-m", "visionpeft", "train", "model=yolo11n.pt", "data=coco8.yaml",
                          "task=detect", "freeze=10"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "would download" in run.stderr and "Traceback" not in run.stderr
    assert not any(tmp_path.glob("runs")), "a run that failed before writing a file leaves no empty folder"


def test_the_request_line_with_local_files_trains_ultralytics_freeze(tmp_path, shared):
    weights = shared / "weights" / "yolov5nu-cocobackbone.pt"
    data = copy_dataset(shared, "coco8", tmp_path)
    project = tmp_path / "runs"
    assert main(["train", f"model={weights}", f"data={data}", "freeze=10", "lr0=0.0123", f"project={project}",
                 *QUICK]) == 0
    (run_dir,) = project.iterdir()
    assert run_dir.name.startswith("coco8-freeze10-")  # named after the data and the strategy
    args = yaml.safe_load((run_dir / "args.yaml").read_text())
    assert args["lr0"] == 0.0123 and args["imgsz"] == 64 and args["freeze"] is None  # the plan froze, not Ultralytics
    trained = json.loads((run_dir / "metrics.json").read_text())["trainable_params"]
    plain = ultralytics_setup(str(weights), tmp_path / "plain", data=str(data), freeze=10)
    model_params = {k: v for k, v in plain["state"].items() if "running" not in k and "num_batches" not in k}
    assert trained == sum(model_params[n].numel() for n in plain["trainable"])
    assert trained == 1_608_432  # the count the issue measured for plain freeze=10 on this model


def test_a_recipe_less_compare_trains_the_default_set(tmp_path, shared):
    weights = shared / "weights" / "yolov5nu-cocobackbone.pt"
    data = copy_dataset(shared, "coco8", tmp_path)
    project = tmp_path / "runs"
    assert main(["compare", f"model={weights}", f"data={data}", f"project={project}", *QUICK]) == 0
    (compare_dir,) = project.iterdir()
    assert compare_dir.name.startswith("coco8-compare-")
    report = json.loads((compare_dir / "report.json").read_text())
    rows = {r["strategy"]: r for r in report["runs"]}
    assert list(rows) == ["full", "freeze10", "lora_head", "head"]
    assert rows["freeze10"]["trainable_params"] == 1_608_432
    assert rows["head"]["trainable_params"] < rows["lora_head"]["trainable_params"] < rows["full"]["trainable_params"]
    assert Path(compare_dir / "report.md").is_file()
