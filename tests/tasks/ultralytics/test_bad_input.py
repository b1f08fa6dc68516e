"""Bad detection input: broken images and empty boxes are named (or skipped and counted), and no code runs
from a crafted Ultralytics checkpoint through train (model:), params, eval and resume."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

pytest.importorskip("ultralytics")

from visionpeft.cli import main  # noqa: E402
from visionpeft.errors import ConfigError  # noqa: E402
from visionpeft.tasks.ultralytics.data import check_data  # noqa: E402

from ..ultralytics_support import make_dataset  # noqa: E402

GOOD = {"train/a": ["0 0.5 0.5 0.2 0.2"], "train/b": ["1 0.4 0.4 0.3 0.3"], "val/c": ["1 0.5 0.5 0.3 0.3"]}
TINY = ["ultralytics.epochs=1", "ultralytics.imgsz=32", "ultralytics.batch=2", "ultralytics.nbs=2",
        "ultralytics.warmup_epochs=0", "ultralytics.workers=0", "ultralytics.device=cpu", "ultralytics.amp=false",
        "ultralytics.mosaic=0", "tensorboard=false"]


def one_line_error(capsys, argv: list) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visionpeft: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------- boxes and images
@pytest.mark.parametrize(
    ("line", "what"),
    [("0 0.5 0.5 0 0.2", "zero-width"), ("0 0.5 0.5 0.2 0", "zero-height"), ("0 0.5 0.5 0.0 0.0", "zero-width"),
     ("0 0.1 0.1 0.1 0.1 0.1 0.1", "zero-width"), ("0 0.1 0.2 0.5 0.2 0.9 0.2", "zero-height")],
)
def test_zero_size_boxes_are_refused_with_file_and_line(tmp_path, line, what):
    data = make_dataset(tmp_path, {**GOOD, "train/d": ["0 0.5 0.5 0.1 0.1", line]}, ["cat", "dog"])
    with pytest.raises(ConfigError, match=f"{what} box in label line") as err:
        check_data(data)
    assert f"{tmp_path / 'labels' / 'train' / 'd.txt'}:2" in str(err.value)


def _break(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:-300])
    elif how == "float":
        path.unlink()
        Image.fromarray(np.zeros((32, 32), np.float32), mode="F").save(path.with_suffix(".tif"))


@pytest.mark.parametrize(("how", "message"), [
    ("empty", "cannot read this image"), ("truncated", "cannot read this image"),
    ("float", r"PIL image mode 'F' \(32-bit integer or float samples\), which Ultralytics' image reader"),
])
def test_bad_images_are_named_or_skipped(tmp_path, how, message):
    data = make_dataset(tmp_path, GOOD, ["cat", "dog"])
    bad = tmp_path / "images" / "train" / "b.jpg"
    _break(bad, how)
    bad = bad if bad.exists() else bad.with_suffix(".tif")
    with pytest.raises(ConfigError, match=message) as err:
        check_data(data, check_images=True)
    assert str(bad) in str(err.value) and "dataset.skip_bad_images: true" in str(err.value)
    info = check_data(data, check_images=True, skip_bad_images=True)
    assert info.skipped == {"train": [bad], "val": []} and [p.name for p in info.splits["train"]] == ["a.jpg"]


def test_sixteen_bit_and_other_readable_modes_pass(tmp_path):
    data = make_dataset(tmp_path, GOOD, ["cat", "dog"])
    (tmp_path / "images" / "train" / "a.jpg").unlink()
    Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(tmp_path / "images" / "train" / "a.png")
    Image.new("RGBA", (32, 32)).save(tmp_path / "images" / "train" / "b.jpg".replace(".jpg", "2.png"))
    info = check_data(data, check_images=True)
    assert info.skipped == {"train": [], "val": []} and len(info.splits["train"]) == 3


@pytest.fixture
def tiny_recipe(tmp_path, shared) -> Path:
    data = make_dataset(tmp_path / "data", {**GOOD, "train/e": ["0 0.3 0.3 0.2 0.2"], "val/f": ["0 0.5 0.5 0.4 0.4"]},
                        ["cat", "dog"])
    path = tmp_path / "det.yaml"
    path.write_text(yaml.safe_dump({
        "task": "detection", "name": "tiny", "model": str(shared / "weights" / "yolov5nu-cocobackbone.pt"),
        "data": str(data), "output": str(tmp_path / "runs"), "strategies": [{"method": "head"}]}))
    return path


def test_cli_zero_byte_image_is_an_error_then_a_counted_skip(tiny_recipe, tmp_path, capsys):
    bad = tmp_path / "data" / "images" / "train" / "b.jpg"
    bad.write_bytes(b"")
    err = one_line_error(capsys, ["train", tiny_recipe, *TINY])
    assert f"{bad}: cannot read this image" in err
    assert main(["train", str(tiny_recipe), *TINY, "dataset.skip_bad_images=true"]) == 0
    (run,) = [p for p in (tmp_path / "runs").iterdir() if (p / "metrics.json").is_file()]
    record = json.loads((run / "data.json").read_text())
    assert record["skipped_bad_images"] == {"train": 1, "val": 0} and record["skipped_files"]["train"] == [str(bad)]
    assert record["images"] == {"train": 2, "val": 2}
    trained_on = (run / "data" / "images-train.txt").read_text().split()
    assert str(bad) not in trained_on and len(trained_on) == 2
    # eval applies the run's policy too: a val image broken since training is skipped and counted.
    broken_val = tmp_path / "data" / "images" / "val" / "f.jpg"
    broken_val.write_bytes(b"\xff\xd8 truncated")
    assert main(["eval", str(run)]) == 0
    record = json.loads((run / "eval-val" / "data.json").read_text())
    assert record["skipped_files"] == {"val": [str(broken_val)]} and record["images"] == {"val": 1}
    assert set(json.loads((run / "eval_val.json").read_text())) >= {"map50", "map50_95"}


# ------------------------------------------------------------------------------------- no code from files
class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """Names one Ultralytics class (so it passes the pickle scan) plus a callable that creates ``marker``."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.save({"model": DetectionModel, "ema": None, "train_args": {}, "payload": _RunsCode(marker)}, path)
    return path


@pytest.fixture
def crafted(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    return crafted_checkpoint(tmp_path / "evil.pt", marker), marker


def test_crafted_checkpoint_through_train_and_params(crafted, tiny_recipe, capsys, monkeypatch):
    evil, marker = crafted
    err = one_line_error(capsys, ["train", tiny_recipe, f"model={evil}", *TINY])
    assert f"{evil}: refused to load: the checkpoint references objects outside the allow-list" in err
    assert "['posix.mkdir']" in err and "VISIONPEFT_TRUST_PICKLE=1" in err
    err = one_line_error(capsys, ["params", evil])
    assert f"{evil}: refused to load" in err
    assert not marker.exists()
    # The opt-in really unpickles fully (which is why it is only for trusted files): the callable runs.
    monkeypatch.setenv("VISIONPEFT_TRUST_PICKLE", "1")
    main(["params", str(evil)])
    assert marker.is_dir()


def test_crafted_checkpoint_through_eval_and_resume(crafted, tiny_recipe, tmp_path, capsys):
    evil, marker = crafted
    run = tmp_path / "runs" / "fake-run"
    (run / "weights").mkdir(parents=True)
    doc = yaml.safe_load(tiny_recipe.read_text())
    (run / "recipe.yaml").write_text(yaml.safe_dump({**doc, "name": "fake-run"}))
    for name in ("best.pt", "last.pt"):
        shutil.copy(evil, run / "weights" / name)
    err = one_line_error(capsys, ["eval", run])
    assert f"{run / 'weights' / 'best.pt'}: refused to load" in err
    err = one_line_error(capsys, ["resume", run])
    assert f"{run / 'weights' / 'last.pt'}: refused to load" in err
    err = one_line_error(capsys, ["merge", run, "-o", tmp_path / "m.pt"])
    assert "refused to load" in err
    assert not marker.exists()
    # merge -o onto a directory or an unwritable place is refused before anything is loaded
    err = one_line_error(capsys, ["merge", run, "-o", tmp_path])
    assert f"merge -o: {tmp_path} is a directory; give a file path such as {tmp_path / 'merged.pt'}" in err
    err = one_line_error(capsys, ["merge", run, "-o", "/proc/merged.pt"])
    assert "merge -o: cannot write into the folder /proc" in err


@pytest.mark.parametrize(
    "strategies",
    [[{"method": "lora", "rank": 2}, {"method": "head"}], [{"method": "freeze", "n": 5}], [{"method": "bitfit"}],
     [{"method": "dora", "rank": 2}, {"method": "head"}], [{"method": "loha", "rank": 2}],
     [{"method": "lokr", "rank": 2}], [{"method": "ssf"}]],
    ids=lambda s: "+".join(e["method"] for e in s),
)
def test_adapted_checkpoints_load_through_the_allow_list(tmp_path, strategies):
    """What a visionpeft run pickles in weights/last.pt (any strategy, each adapter layer class) is on the
    allow-list."""
    import torch

    import visionpeft
    from visionpeft.backends.safe_load import load_checkpoint
    from visionpeft.backends.ultralytics import build_model

    model = build_model("yolov8n.yaml", nc=2)
    visionpeft.apply(model, strategies)
    path = tmp_path / "last.pt"
    torch.save({"model": None, "ema": model, "train_args": {}}, path)
    loaded, _ = load_checkpoint(path)
    assert visionpeft.get_plan(loaded).trainable == visionpeft.get_plan(model).trainable
    assert [type(m) for m in loaded.modules()] == [type(m) for m in model.modules()]
    x = torch.rand(1, 3, 64, 64)
    model.eval()
    torch.testing.assert_close(loaded.eval()(x)[0], model(x)[0])
