"""Ultralytics' own names (``yolo11n.pt``, ``coco8.yaml``) resolve as Ultralytics resolves them; offline, one line.

The download step is replaced by a copy of ../shared material (the only part that needs the internet): the
rest - which file, which URL, which folder, Ultralytics' renames - is Ultralytics' own code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("ultralytics")

import ultralytics.data.utils as data_utils  # noqa: E402
import ultralytics.utils as ul_utils  # noqa: E402
import ultralytics.utils.downloads as downloads  # noqa: E402

from visionpeft.backends.ultralytics import build_model  # noqa: E402
from visionpeft.backends.ultralytics_names import (  # noqa: E402
    asset_url,
    resolve_cls_data,
    resolve_data,
    resolve_model,
)
from visionpeft.cli import main  # noqa: E402
from visionpeft.errors import ConfigError  # noqa: E402
from visionpeft.tasks.ultralytics.data import check_data  # noqa: E402

RELEASE = "https://github.com/ultralytics/assets/releases/download"


@pytest.fixture()
def ul_dirs(tmp_path, monkeypatch):
    """A fresh working directory, Ultralytics ``datasets_dir`` and ``weights_dir`` (no download has happened)."""
    work, datasets, weights = tmp_path / "work", tmp_path / "datasets", tmp_path / "weights"
    for d in (work, datasets, weights):
        d.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(ul_utils, "DATASETS_DIR", datasets)
    monkeypatch.setattr(data_utils, "DATASETS_DIR", datasets)
    monkeypatch.setitem(ul_utils.SETTINGS, "weights_dir", str(weights))
    monkeypatch.setattr(data_utils, "check_font", lambda *a, **k: None)  # Ultralytics' font fetch: not ours
    return work, datasets, weights


@pytest.fixture()
def online(monkeypatch):
    monkeypatch.setattr(ul_utils, "is_online", lambda: True)


@pytest.fixture()
def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args} {kwargs}")

    monkeypatch.setattr(downloads, "safe_download", refuse)
    monkeypatch.setattr(data_utils, "safe_download", refuse)


@pytest.fixture()
def fake_model_download(shared, monkeypatch):
    """``safe_download`` for release assets, writing the COCO-backbone YOLOv5nu checkpoint where asked."""
    calls = []

    def fetch(url, file=None, dir=None, **kwargs):
        calls.append((url, str(file)))
        target = Path(dir or ".") / (file or Path(url).name)
        shutil.copy(shared / "weights" / "yolov5nu-cocobackbone.pt", target)
        return target

    monkeypatch.setattr(downloads, "safe_download", fetch)
    return calls


@pytest.fixture()
def fake_data_download(shared, monkeypatch):
    """``safe_download`` of a dataset zip into ``datasets_dir``: the ../shared copy of that dataset, unzipped."""
    calls = []

    def fetch(url, file=None, dir=None, **kwargs):
        calls.append((url, str(dir)))
        name = Path(str(url)).name.removesuffix(".zip")
        shutil.copytree(shared / "data" / name, Path(dir) / name)
        return Path(dir) / name

    monkeypatch.setattr(data_utils, "safe_download", fetch)
    return calls


# ----------------------------------------------------------------------------------------------- models
def test_model_name_downloads_the_release_asset_into_the_working_dir(ul_dirs, online, fake_model_download):
    work, _, _ = ul_dirs
    path = resolve_model("yolo11n.pt")
    assert Path(path).resolve() == work / "yolo11n.pt" and (work / "yolo11n.pt").is_file()
    assert fake_model_download == [(f"{RELEASE}/v8.4.0/yolo11n.pt", "yolo11n.pt")]
    assert resolve_model("yolo11n.pt") == path and len(fake_model_download) == 1  # found, not fetched again
    model = build_model("yolo11n.pt")
    assert type(model).__name__ == "DetectionModel" and model.nc == 80


def test_model_names_follow_ultralytics_renames_and_every_task(ul_dirs, online, fake_model_download):
    assert Path(resolve_model("yolov5n.pt")).name == "yolov5nu.pt"  # Ultralytics' YOLOv5 -> YOLOv5u rename
    for name in ("yolov8n.pt", "yolo11n-seg.pt", "yolov8n-pose.pt", "yolo11n-obb.pt", "yolo11n-cls.pt",
                 "rtdetr-l.pt"):
        assert Path(resolve_model(name)).name == name
    assert [u for u, _ in fake_model_download] == [f"{RELEASE}/v8.4.0/{n}" for n in (
        "yolov5nu.pt", "yolov8n.pt", "yolo11n-seg.pt", "yolov8n-pose.pt", "yolo11n-obb.pt", "yolo11n-cls.pt",
        "rtdetr-l.pt")]


def test_weights_dir_and_local_files_win(ul_dirs, shared, no_download):
    work, _, weights = ul_dirs
    shutil.copy(shared / "weights" / "yolov5nu-cocobackbone.pt", weights / "yolov8n.pt")
    assert resolve_model("yolov8n.pt") == str(weights / "yolov8n.pt")
    local = str(shared / "weights" / "yolov5n.pt")  # a path wins over Ultralytics' yolov5n -> yolov5nu rename
    assert resolve_model(local) == local
    assert resolve_model("yolo11n.yaml") == "yolo11n.yaml"  # built from the package: nothing to fetch
    with pytest.raises(ConfigError, match=r"weight file sub/yolo11n.pt does not exist"):
        resolve_model("sub/yolo11n.pt")


def test_offline_model_name_is_one_line_naming_the_url(ul_dirs, no_download):
    with pytest.raises(ConfigError) as err:
        resolve_model("yolo11n.pt")
    text = str(err.value)
    assert f"{RELEASE}/v8.4.0/yolo11n.pt" in text and "offline" in text and "model=path/to/yolo11n.pt" in text
    assert "\n" not in text and asset_url("yolo11n.pt") in text
    with pytest.raises(ConfigError, match=r"neither a local file nor an Ultralytics model name.*yolo11n.pt"):
        resolve_model("yolo11q.pt")


# --------------------------------------------------------------------------------------------- datasets
def test_dataset_name_downloads_into_datasets_dir(ul_dirs, online, fake_data_download):
    _, datasets, _ = ul_dirs
    yaml_path = resolve_data("coco8.yaml")
    assert Path(yaml_path).parts[-3:] == ("cfg", "datasets", "coco8.yaml")
    assert fake_data_download == [(f"{RELEASE}/v0.0.0/coco8.zip", str(datasets))]
    info = check_data("coco8")  # bare name, as check_det_dataset accepts it; found now, no second download
    assert len(fake_data_download) == 1 and info.nc == 80 and info.names[0] == "person"
    assert {s: len(v) for s, v in info.splits.items()} == {"train": 4, "val": 4}
    assert all(p.is_relative_to(datasets / "coco8") for p in info.splits["train"])


def test_every_task_dataset_name_resolves(ul_dirs, online, fake_data_download):
    for name in ("coco8-seg", "coco8-pose", "dota8"):
        path = resolve_data(f"{name}.yaml")
        assert Path(path).name == f"{name}.yaml" and (ul_dirs[1] / name / "images" / "val").is_dir()
    assert [Path(u).name for u, _ in fake_data_download] == ["coco8-seg.zip", "coco8-pose.zip", "dota8.zip"]


def test_local_data_paths_win_and_typos_are_named(ul_dirs, shared, no_download):
    local = str(shared / "data" / "coco8" / "data.yaml")
    assert resolve_data(local) == local
    with pytest.raises(ConfigError, match=r"data: data yaml sub/coco8.yaml does not exist"):
        resolve_data("sub/coco8.yaml")
    with pytest.raises(ConfigError, match=r"coco9.yaml is neither a local file nor a dataset yaml.*coco8.yaml"):
        resolve_data("coco9.yaml")


def test_offline_dataset_name_is_one_line_naming_the_zip(ul_dirs, no_download):
    _, datasets, _ = ul_dirs
    for value in ("coco8.yaml", "coco128.yaml"):
        with pytest.raises(ConfigError) as err:
            resolve_data(value)
        text = str(err.value)
        zip_name = value.replace(".yaml", ".zip")
        assert f"{RELEASE}/v0.0.0/{zip_name}" in text and str(datasets) in text and "offline" in text
        assert "data=path/to/data.yaml" in text and "\n" not in text


def test_classification_dataset_names(ul_dirs, shared, no_download):
    _, datasets, _ = ul_dirs
    with pytest.raises(ConfigError, match=r"would download https://github.com/ultralytics/assets/releases/"
                                          r"download/v0.0.0/imagenette160.zip into .*offline"):
        resolve_cls_data("imagenette160")
    shutil.copytree(shared / "data" / "flowers5_128", datasets / "flowers5_128")
    assert resolve_cls_data("flowers5_128") == str(datasets / "flowers5_128")


# -------------------------------------------------------------------------------------------------- CLI
def test_cli_offline_names_exit_2_with_one_line(ul_dirs, tmp_path, capsys, no_download):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: detection\nname: seed\nmodel: yolo11n.pt\ndata: coco8.yaml\noutput: {tmp_path}/runs\n"
                      "strategies: [{method: lora}, {method: head}]\n")
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and f"{RELEASE}/v8.4.0/yolo11n.pt" in err
    assert main(["compare", str(recipe), "model=yolov5nu.pt"]) == 2
    assert f"{RELEASE}/v8.4.0/yolov5nu.pt" in capsys.readouterr().err
    assert main(["params", "yolov8n.pt"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{RELEASE}/v8.4.0/yolov8n.pt" in err
    # A bare Ultralytics name (as `yolo train model=yolo11n` takes it) is an Ultralytics model, not a timm name.
    assert main(["params", "yolo11n-seg"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{RELEASE}/v8.4.0/yolo11n-seg.pt" in err


def test_train_and_eval_the_seed_example_by_names(ul_dirs, online, fake_model_download, fake_data_download,
                                                  tmp_path, capsys):
    """``model=yolo11n.pt data=coco8.yaml`` trains (downloads replaced); the run records the files it used."""
    from visionpeft.safe_yaml import load_yaml_file

    work, datasets, _ = ul_dirs
    recipe = tmp_path / "seed.yaml"
    recipe.write_text(
        f"task: detection\nname: seed\nmodel: yolo11n.pt\ndata: coco8.yaml\noutput: {tmp_path / 'runs'}\n"
        "strategies: [{method: lora, rank: 2}, {method: head}]\nultralytics: {epochs: 1, imgsz: 64, batch: 2, "
        "nbs: 2, warmup_epochs: 0, workers: 0, device: cpu, amp: false}\n")
    assert main(["train", str(recipe)]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    saved = load_yaml_file(run / "recipe.yaml")
    assert saved["model"] == str(work / "yolo11n.pt") and saved["data"] == resolve_data("coco8.yaml")
    assert len(fake_model_download) == 1 and len(fake_data_download) == 1
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert "map50_95" in capsys.readouterr().out


def test_recipes_take_bare_ultralytics_names():
    from visionpeft.recipe import parse_recipe

    base = {"task": "detection", "name": "n", "strategies": [{"method": "head"}]}
    recipe = parse_recipe({**base, "model": "yolo11n", "data": "coco8"})
    assert recipe.model == "yolo11n.pt" and recipe.data == "coco8"  # Ultralytics' own stem -> asset name
    with pytest.raises(ConfigError, match="model: expected an Ultralytics '.pt' checkpoint"):
        parse_recipe({**base, "model": "resnet50", "data": "coco8"})
    with pytest.raises(ConfigError, match="data: expected an Ultralytics data yaml"):
        parse_recipe({**base, "model": "yolo11n.pt", "data": "images/"})
