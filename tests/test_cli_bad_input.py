"""Bad input at the command line: one line on stderr naming the file or field, exit status 2, no traceback;
and no code runs from a classification weights, checkpoint or adapter file."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from visionpeft.cli import main
from visionpeft.data.toy import make_toy_imagefolder


def run_error(capsys, argv: list[str]) -> str:
    """Run the CLI, assert exit status 2 and a single stderr line; return that line."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visionpeft: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def write_recipe(path: Path, data: Path, tmp: Path, **extra) -> Path:
    doc = {"name": "bad", "model": "test_efficientnet", "data": str(data), "output": str(tmp / "runs"),
           "strategies": [{"method": "lora", "rank": 2}, {"method": "head"}], "tensorboard": False,
           "train": {"epochs": 1, "batch_size": 4, "workers": 0, "progress": False},
           "augment": {"img_size": 32, "random_resized_crop": False, "hflip": 0.0}, **extra}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(recipe, run dir) of a finished tiny classification run."""
    tmp = tmp_path_factory.mktemp("cli-bad")
    data = make_toy_imagefolder(tmp / "toy", classes=2, train_per_class=4, val_per_class=2, size=16)
    recipe = write_recipe(tmp / "recipe.yaml", data, tmp)
    assert main(["train", str(recipe)]) == 0
    (run,) = (tmp / "runs").glob("bad-*")
    return recipe, run


@pytest.fixture
def toy(tmp_path) -> Path:
    return make_toy_imagefolder(tmp_path / "toy", classes=2, train_per_class=3, val_per_class=1, size=16)


# ------------------------------------------------------------------------------------- data
def test_single_class_dataset(tmp_path, capsys):
    data = make_toy_imagefolder(tmp_path / "one", classes=1, train_per_class=4, val_per_class=2, size=16)
    err = run_error(capsys, ["train", write_recipe(tmp_path / "r.yaml", data, tmp_path)])
    assert f"{data / 'train'}: split 'train' has 1 class ['class_0']; classification needs at least 2" in err


def test_csv_split_with_only_a_header(tmp_path, toy, capsys):
    (tmp_path / "train.csv").write_text("path,label\n" + "".join(
        f"{p},{p.parent.name}\n" for p in sorted(toy.glob("train/*/*.png"))))
    (tmp_path / "val.csv").write_text("path,label\n")
    desc = tmp_path / "d.yaml"
    desc.write_text("format: csv\ntrain: train.csv\nval: val.csv\n")
    err = run_error(capsys, ["train", write_recipe(tmp_path / "r.yaml", desc, tmp_path)])
    assert f"empty split in {tmp_path / 'val.csv'}" in err and "different class set" not in err


def test_decompression_bomb_is_named_then_skipped_and_counted(tmp_path, toy, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # the images are 16 x 16 = 256 px
    bomb = toy / "train" / "class_0" / "huge.png"
    Image.new("RGB", (80, 80)).save(bomb)  # 6400 px > 2 * 2000: DecompressionBombError
    recipe = write_recipe(tmp_path / "r.yaml", toy, tmp_path)
    err = run_error(capsys, ["train", recipe])
    assert f"{bomb}: image too large to decode safely" in err and "dataset.skip_bad_images" in err
    assert main(["train", str(recipe), "dataset.skip_bad_images=true"]) == 0
    (run,) = [p for p in (tmp_path / "runs").iterdir() if (p / "metrics.json").is_file()]
    assert json.loads((run / "data.json").read_text())["skipped_bad_images"] == {"train": 1, "val": 0}


def test_batch_size_one_with_training_batchnorm(tmp_path, toy, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", toy, tmp_path, strategies=[{"method": "full"}])
    err = run_error(capsys, ["train", recipe, "train.batch_size=1"])
    assert "train.batch_size: 1 with" in err and "BatchNorm layers in train mode" in err
    # A strategy that keeps BatchNorm frozen trains with batch 1 (batches of 1 through eval-mode BN).
    assert main(["train", str(recipe), "train.batch_size=1", "strategies=[{method: head}]"]) == 0


def test_last_batch_of_one_is_dropped(tmp_path, capsys):
    data = make_toy_imagefolder(tmp_path / "toy", classes=2, train_per_class=3, val_per_class=1, size=16)
    # 6 training images, batch 5: the last batch would hold 1 image, which BatchNorm cannot train on.
    recipe = write_recipe(tmp_path / "r.yaml", data, tmp_path, strategies=[{"method": "full"}])
    assert main(["train", str(recipe), "train.batch_size=5"]) == 0


# ------------------------------------------------------------------------------------- recipe and CLI
def test_override_with_an_empty_segment(trained, capsys):
    recipe, _ = trained
    err = run_error(capsys, ["train", recipe, "a..b=1"])
    assert "override 'a..b': empty key between dots (position 2)" in err and "unknown key" not in err


def test_yaml_alias_bomb(tmp_path, capsys):
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    seed = "seed: [" + ",".join(["*a8"] * 9) + "]\n"
    path.write_text("model: test_efficientnet\ndata: x\n" + "\n".join(lines) + "\n" + seed)
    err = run_error(capsys, ["train", path])
    assert f"{path}: the YAML expands to more than 200,000 values" in err


def test_params_strategy_invalid_yaml(capsys):
    err = run_error(capsys, ["params", "test_efficientnet", "--strategy", "[{method: lora"])
    assert "--strategy: not valid YAML: expected ',' or '}', but got '<stream end>' at line 1, column 15" in err


@pytest.mark.parametrize("arg", ["head", "lora,head", "lora, head", "[lora, head]"])
def test_params_accepts_bare_method_names(capsys, arg):
    assert main(["params", "test_efficientnet", "--num-classes", "3", "--strategy", arg, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    head = 256 * 3 + 3  # test_efficientnet: 256 pooled features -> 3 classes
    assert report["trainable"] == head if arg == "head" else report["trainable"] > head


def test_params_unknown_bare_name(capsys):
    err = run_error(capsys, ["params", "test_efficientnet", "--strategy", "lorax"])
    assert "unknown strategy method 'lorax'" in err and "did you mean 'lora'" in err


# ------------------------------------------------------------------------------------- files
@pytest.mark.parametrize(
    ("content", "detail"),
    [(b"just my notes\n", "header too large"), (b"", "header too small"),
     (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}", "")],
)
def test_weights_that_are_not_safetensors(tmp_path, toy, capsys, content, detail):
    weights = tmp_path / "notes.safetensors"
    weights.write_bytes(content)
    err = run_error(capsys, ["train", write_recipe(tmp_path / "r.yaml", toy, tmp_path, weights=str(weights))])
    assert f"weights: {weights}: not a readable safetensors file" in err and detail in err


def test_truncated_safetensors_weights(tmp_path, toy, capsys):
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(1000)}, str(weights))
    weights.write_bytes(weights.read_bytes()[:-100])
    err = run_error(capsys, ["train", write_recipe(tmp_path / "r.yaml", toy, tmp_path, weights=str(weights))])
    assert f"weights: {weights}: not a readable safetensors file" in err


def test_truncated_adapter_at_eval(trained, tmp_path, capsys):
    import shutil

    _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    adapter = copy / "adapter" / "adapter.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:200])
    err = run_error(capsys, ["eval", copy])
    assert f"{adapter}: not a readable safetensors file" in err


def test_output_folder_that_cannot_be_created(tmp_path, toy, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    recipe = write_recipe(tmp_path / "r.yaml", toy, tmp_path)
    err = run_error(capsys, ["train", recipe, f"output={blocker}/runs"])
    assert f"output: cannot create the folder {blocker}/runs: {blocker} is a file, not a folder" in err
    err = run_error(capsys, ["compare", recipe, "output=/proc/visionpeft-runs"])
    assert "output: cannot create the folder /proc/visionpeft-runs" in err


def test_merge_output_checks(trained, tmp_path, capsys):
    _, run = trained
    target = tmp_path / "model.safetensors"
    target.mkdir()
    err = run_error(capsys, ["merge", run, "-o", target])
    assert f"merge -o: {target} is a directory; give a file path" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    err = run_error(capsys, ["merge", run, "-o", blocker / "m.safetensors"])
    assert f"merge -o: cannot create the folder {blocker}" in err
    err = run_error(capsys, ["merge", run, "-o", "/proc/visionpeft/m.pt"])
    assert "merge -o: cannot create the folder /proc/visionpeft" in err
    err = run_error(capsys, ["merge", run, "-o", "/proc/m.safetensors"])  # the folder exists, writing fails
    assert "merge -o: cannot write into the folder /proc" in err
    # A folder without a model-file suffix is where model.safetensors goes (documented behaviour).
    assert main(["merge", str(run), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------- no code from files
class _RunsCode:
    """Pickles as a call of ``os.mkdir(marker)``: loading it fully would create the marker folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _crafted(path: Path, marker: Path, **tensors) -> Path:
    torch.save({**tensors, "payload": _RunsCode(marker)}, path)
    with pytest.raises(pickle.UnpicklingError, match="posix.mkdir"):  # the file really carries a callable
        torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
    return path


def test_classification_weights_file_runs_no_code(tmp_path, toy, capsys):
    marker = tmp_path / "ran"
    weights = _crafted(tmp_path / "w.pth", marker, x=torch.zeros(2))
    err = run_error(capsys, ["train", write_recipe(tmp_path / "r.yaml", toy, tmp_path, weights=str(weights))])
    assert f"weights: {weights}: refused: the file holds pickled Python objects besides tensors" in err
    err = run_error(capsys, ["params", "test_efficientnet", "--weights", weights])
    assert "refused" in err
    assert not marker.exists()


def test_resume_checkpoint_runs_no_code(trained, tmp_path, capsys):
    import shutil

    _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    marker = tmp_path / "ran"
    _crafted(copy / "checkpoints" / "last.pt", marker, epoch=0)
    err = run_error(capsys, ["resume", copy])
    assert f"{copy / 'checkpoints' / 'last.pt'}: unreadable checkpoint" in err
    assert not marker.exists()


def test_adapter_file_runs_no_code(trained, tmp_path, capsys):
    import shutil

    _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    marker = tmp_path / "ran"
    _crafted(copy / "adapter" / "adapter.safetensors", marker)
    err = run_error(capsys, ["eval", copy])
    assert "adapter.safetensors: not a readable safetensors file" in err
    err = run_error(capsys, ["merge", copy, "-o", tmp_path / "m.safetensors"])
    assert "adapter.safetensors: not a readable safetensors file" in err
    assert not marker.exists()


def test_resume_finished_or_changed_run(trained, tmp_path, capsys):
    """A finished run is refused and left byte-identical; data/eval-defining overrides are refused by key."""
    import shutil

    _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = {p: p.read_bytes() for p in sorted(copy.rglob("*")) if p.is_file()}
    err = run_error(capsys, ["resume", copy])
    assert f"resume {copy}: nothing to resume: the run finished all 1 epochs" in err and "new run" in err
    for override, key in (("augment.img_size=64", "augment.img_size"), ("strategies.0.method=bitfit", "strategies"),
                          ("strategies.0.rank=8", "strategies"), ("data=/tmp", "data")):
        err = run_error(capsys, ["resume", copy, override])
        assert f"{key} cannot change when resuming" in err
    assert {p: p.read_bytes() for p in sorted(copy.rglob("*")) if p.is_file()} == before


def test_weights_of_another_architecture(tmp_path, capsys, shared):
    """timm loads non-strictly when the class count differs: keys that do not fit must still be refused."""
    from visionpeft.backends.timm import build_model
    from visionpeft.errors import ConfigError

    weights = shared / "weights"
    vit, lite = weights / "vit_tiny_patch16_224.in1k.safetensors", weights / "tf_efficientnet_lite0.in1k.safetensors"
    err = run_error(capsys, ["params", "tf_efficientnet_lite0", "--num-classes", "5", "--weights", vit])
    assert f"weights: {vit}: does not fit timm model 'tf_efficientnet_lite0'" in err and "conv_stem.weight" in err
    with pytest.raises(ConfigError, match="does not fit timm model 'vit_tiny_patch16_224'.*tensors the model"):
        build_model("vit_tiny_patch16_224", 3, weights=lite)
    # .pth with another architecture's keys, and the right weights still load
    from safetensors.torch import load_file

    pth = tmp_path / "vit.pth"
    torch.save(load_file(str(vit)), pth)
    with pytest.raises(ConfigError, match=f"weights: {pth}: does not fit"):
        build_model("tf_efficientnet_lite0", 5, weights=pth)
    model = build_model("tf_efficientnet_lite0", 5, weights=lite)
    torch.testing.assert_close(model.conv_stem.weight, load_file(str(lite))["conv_stem.weight"])


def _csv_dataset(tmp_path: Path, toy: Path) -> Path:
    for split in ("train", "val"):
        (tmp_path / f"{split}.csv").write_text("path,label\n" + "".join(
            f"{p},{p.parent.name}\n" for p in sorted(toy.glob(f"{split}/*/*.png"))))
    desc = tmp_path / "d.yaml"
    desc.write_text("format: csv\ntrain: train.csv\nval: val.csv\n")
    return desc


def test_csv_split_that_is_not_utf8(tmp_path, toy, capsys):
    desc = _csv_dataset(tmp_path, toy)
    val = tmp_path / "val.csv"
    val.write_bytes(val.read_bytes() + b"caf\xe9.png,class_0\n")  # Latin-1, not UTF-8
    err = run_error(capsys, ["train", write_recipe(tmp_path / "r.yaml", desc, tmp_path)])
    assert f"CSV split: {val}: not a UTF-8 text file" in err
    # A byte-order mark (spreadsheet export) is fine.
    val.write_bytes(b"\xef\xbb\xbf" + b"path,label\n" + b"".join(
        f"{p},{p.parent.name}\n".encode() for p in sorted(toy.glob("val/*/*.png"))))
    from visionpeft.data.descriptor import load_descriptor
    from visionpeft.data.samples import list_split

    assert len(list_split(load_descriptor(desc), "val").samples) == 2


def test_adapter_json_that_is_not_utf8(trained, tmp_path, capsys):
    import shutil

    _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "adapter" / "adapter.json").write_bytes(b'{"format": "\xff"}')
    err = run_error(capsys, ["eval", copy])
    assert f"{copy / 'adapter' / 'adapter.json'}: not a UTF-8 text file" in err


def test_missing_listed_file_stops_before_training(tmp_path, toy, capsys):
    desc = _csv_dataset(tmp_path, toy)
    val = tmp_path / "val.csv"
    val.write_text(val.read_text() + f"{tmp_path / 'gone.png'},class_0\n")
    recipe = write_recipe(tmp_path / "r.yaml", desc, tmp_path)
    err = run_error(capsys, ["train", recipe])
    assert f"{val}: split 'val': 1 listed image file not found ({tmp_path / 'gone.png'})" in err
    assert "skip_bad_images" in err
    assert not list((tmp_path / "runs").glob("*/checkpoints")) if (tmp_path / "runs").exists() else True
    # With skip_bad_images the file is skipped and counted.
    assert main(["train", str(recipe), "dataset.skip_bad_images=true"]) == 0
    (run,) = [r for r in (tmp_path / "runs").iterdir() if (r / "data.json").is_file()]
    assert json.loads((run / "data.json").read_text())["skipped_bad_images"] == {"train": 0, "val": 1}


@pytest.mark.parametrize("override, expected", [
    ("augment.img_size=1000000000", "augment.img_size: expected an image size of 8..4096 pixels"),
    ("augment.img_size=4", "augment.img_size: expected an image size of 8..4096 pixels"),
    ("augment.img_size=abc", "augment.img_size: Input should be a valid integer"),
    ("augment.scale=[0.5]", "augment.scale: expected a [min, max] pair with 0 < min <= max <= 1"),
    ("augment.scale=[0.5,2]", "augment.scale: expected a [min, max] pair with 0 < min <= max <= 1"),
    ("augment.scale=0.5", "augment.scale: expected a [min, max] pair"),
    ("augment.ratio=[1]", "augment.ratio: expected a [min, max] pair with 0 < min <= max"),
])
def test_bounded_augment_values(tmp_path, toy, capsys, override, expected):
    err = run_error(capsys, ["train", write_recipe(tmp_path / "r.yaml", toy, tmp_path), override])
    assert expected in err and "Field required" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("arg, expected", [
    ("/tmp/visionpeft-no-such-file.yaml", "file not found"),
    ("nofile.yml", "file not found"),
    ("some/dir/strategy.json", "file not found"),
    ("/tmp", "is a directory"),
])
def test_params_strategy_path_that_does_not_exist(capsys, arg, expected):
    err = run_error(capsys, ["params", "test_efficientnet", "--strategy", arg])
    assert f"--strategy {arg}: {expected}" in err and "unknown strategy method" not in err
    assert "YAML/JSON file" in err


def test_quoted_messages_are_cut_at_a_word():
    from visionpeft.safe_yaml import brief_text

    assert brief_text("short", 300) == "short"
    assert brief_text("Cannot reach the hub, please try again later " * 5, 60) == (
        "Cannot reach the hub, please try again later Cannot...")
    assert brief_text("x" * 100, 20) == "x" * 17 + "..."  # no space to cut at: cut at the limit
