"""Bad input for the segment / pose / obb / classify engines: one error line, exit status 2, no run directory."""

from __future__ import annotations

import pytest

pytest.importorskip("ultralytics")

from visionpeft.cli import main  # noqa: E402

from ..ultralytics_support import copy_dataset  # noqa: E402


def _err(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def _recipe(tmp_path, task, model, data):
    path = tmp_path / f"{task}.yaml"
    path.write_text(f"task: {task}\nmodel: {model}\ndata: {data}\noutput: {tmp_path / 'runs'}\n"
                    "strategies: [{method: lora}, {method: head}]\nultralytics: {epochs: 1, imgsz: 64, device: cpu}\n")
    return path


def test_model_of_another_task(shared, tmp_path, capsys):
    data = copy_dataset(shared, "coco8-seg", tmp_path)
    err = _err(capsys, ["train", str(_recipe(tmp_path, "segment", "yolov8n-pose.yaml", data))])
    assert "yolov8n-pose.yaml: a model yaml of task 'pose', but the recipe's task trains 'segment' models" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_pose_labels_and_kpt_shape(shared, tmp_path, capsys):
    data = copy_dataset(shared, "coco8-pose", tmp_path)
    label = sorted((data.parent / "labels" / "train").iterdir())[0]
    good = label.read_text()
    label.write_text(" ".join(good.splitlines()[0].split()[:-3]) + "\n")  # one keypoint short
    err = _err(capsys, ["train", str(_recipe(tmp_path, "pose", "yolov8n-pose.yaml", data))])
    assert f"{label}:1: malformed label line" in err and "(56 numbers, kpt_shape [17, 3]), got 53 numbers" in err
    label.write_text(good)
    data.write_text(data.read_text().replace("kpt_shape: [17, 3]", ""))
    err = _err(capsys, ["train", str(_recipe(tmp_path, "pose", "yolov8n-pose.yaml", data))])
    assert "kpt_shape: expected [keypoints, 2 or 3] such as [17, 3] for a pose dataset, got None" in err


def test_obb_rows_and_classify_folders(shared, tmp_path, capsys):
    data = copy_dataset(shared, "dota8", tmp_path)
    label = sorted((data.parent / "labels" / "val").iterdir())[0]
    label.write_text("0 0.5 0.5 0.1 0.1\n")
    err = _err(capsys, ["train", str(_recipe(tmp_path, "obb", "yolov8n-obb.yaml", data))])
    assert f"{label}:1: malformed label line" in err and "expected 'class x1 y1 x2 y2 x3 y3 x4 y4'" in err
    err = _err(capsys, ["train", str(_recipe(tmp_path, "classify", "yolov8n-cls.yaml", data))])
    assert "data: expected a classification dataset folder" in err
    (tmp_path / "cls" / "train" / "a").mkdir(parents=True)
    err = _err(capsys, ["train", str(_recipe(tmp_path, "classify", "yolov8n-cls.yaml", tmp_path / "cls"))])
    assert f"{tmp_path / 'cls' / 'train' / 'a'}: no images" in err
