"""Run directories written before the Ultralytics task table (``recipe.yaml`` says ``task: detection``, the former
name of ``detect``) keep working with every command: eval, merge, predict, export, resume's checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("ultralytics")

from visionpeft.cli import main  # noqa: E402
from visionpeft.run_dir import engine_of_run  # noqa: E402

from ..ultralytics_support import copy_dataset  # noqa: E402


@pytest.fixture(scope="module")
def old_run(shared, tmp_path_factory) -> Path:
    """A 1-epoch LoRA + head run of a former-name recipe, its recipe.yaml rewritten as the old code wrote it."""
    root = tmp_path_factory.mktemp("old")
    data = copy_dataset(shared, "coco8", root)
    recipe = root / "det.yaml"
    recipe.write_text(
        f"task: detection\nname: old\nmodel: {shared / 'weights' / 'yolov5nu-cocobackbone.pt'}\ndata: {data}\n"
        f"output: {root / 'runs'}\nstrategies: [{{method: lora, rank: 4}}, {{method: head}}]\n"
        "ultralytics: {epochs: 1, imgsz: 64, batch: 2, nbs: 2, warmup_epochs: 0, workers: 0, device: cpu, "
        "amp: false}\n")
    assert main(["train", str(recipe)]) == 0  # an old recipe trains
    (run,) = (root / "runs").iterdir()
    saved = (run / "recipe.yaml").read_text()
    assert "task: detect\n" in saved  # new runs record Ultralytics' name
    (run / "recipe.yaml").write_text(saved.replace("task: detect\n", "task: detection\n"))
    return run


def test_old_run_dir_reads_as_detect(old_run):
    assert engine_of_run(old_run).task == "detect"


def test_old_run_dir_eval_merge_predict_export(old_run, tmp_path, capsys):
    assert main(["eval", str(old_run), "--split", "val"]) == 0
    metrics = json.loads((old_run / "eval_val.json").read_text())
    assert set(metrics) == {"map50", "map50_95", "precision", "recall"}
    assert main(["merge", str(old_run), "-o", str(tmp_path / "merged.pt")]) == 0
    assert (tmp_path / "merged.pt").is_file()
    image = old_run.parent.parent / "coco8" / "images" / "val" / "000000000036.jpg"
    assert main(["predict", str(old_run), f"source={image}", f"out={tmp_path / 'p'}"]) == 0
    assert json.loads((tmp_path / "p" / "predictions.json").read_text())["ultralytics_task"] == "detect"
    assert main(["export", str(old_run), "--format", "visionpeft", "-o", str(tmp_path / "a")]) == 0


def test_old_finished_run_is_refused_by_resume_in_one_line(old_run, capsys):
    assert main(["resume", str(old_run)]) == 2
    assert "nothing to re" in capsys.readouterr().err  # its checks ran: the run was read as a detect run
