"""The command line: train/compare/resume/eval/merge/params, and one-line errors with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from visionpeft.cli import main
from visionpeft.data.toy import make_toy_imagefolder


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    data = make_toy_imagefolder(tmp_path / "toy", classes=3, train_per_class=8, val_per_class=4, size=16)
    doc = {"name": "cli", "model": "test_efficientnet", "data": str(data), "output": str(tmp_path / "runs"),
           "strategies": [{"method": "lora", "rank": 2}, {"method": "head"}],
           "compare": {"probe": [{"method": "head"}], "lora": [{"method": "lora", "rank": 2}, {"method": "head"}]},
           "train": {"epochs": 1, "batch_size": 8, "workers": 0, "progress": False},
           "augment": {"img_size": 32, "random_resized_crop": False, "hflip": 0.0}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_compare_eval_merge(recipe_file, tmp_path, capsys):
    assert main(["compare", str(recipe_file), "train.epochs=2", "tensorboard=false"]) == 0
    (cdir,) = (tmp_path / "runs").glob("cli-compare-*")
    assert sorted(p.name for p in cdir.iterdir() if p.is_dir()) == ["00-full", "01-probe", "02-lora"]
    report = json.loads((cdir / "report.json").read_text())
    assert [r["strategy"] for r in report["runs"]] == ["full", "probe", "lora"]
    assert report["recipe"]["train"]["epochs"] == 2
    # CPU memory is counted from parts (params, grads, optimizer state, saved activations): a linear
    # probe needs far less than full fine-tuning.
    assert 0 < report["runs"][1]["peak_mem_mb"] < report["runs"][0]["peak_mem_mb"]
    for name in ("report.md", "report.csv", "pareto.png"):
        assert (cdir / name).is_file()
    # No test split in this toy: the headline is validation, and the report says it is selection-biased.
    assert report["protocol"]["headline"] == "top1_val" and "selection-biased" in (cdir / "report.md").read_text()
    assert not list(cdir.rglob("events.out.tfevents.*"))  # tensorboard=false
    run_recipe = yaml.safe_load((cdir / "02-lora" / "recipe.yaml").read_text())
    assert run_recipe["strategies"][0]["method"] == "lora" and run_recipe["compare"] is None
    capsys.readouterr()
    assert main(["eval", str(cdir / "02-lora")]) == 0
    top1 = json.loads(capsys.readouterr().out)["top1"]
    assert top1 == pytest.approx(report["runs"][2]["top1_val"])
    out = tmp_path / "merged.pt"
    assert main(["merge", str(cdir / "02-lora"), "-o", str(out)]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[-1] == f"load it in Python: {json.loads(out.with_suffix('.json').read_text())['load']}"
    sd = torch.load(out, weights_only=True)
    assert not any("lora" in k for k in sd) and "classifier.weight" in sd


def test_train_and_resume(recipe_file, tmp_path, monkeypatch):
    from visionpeft.tasks.classification.trainer import Trainer

    original, calls = Trainer.train_epoch, {"n": 0}

    def dying(self):  # killed during the second epoch, after epoch 0's last.pt was written
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        original(self)

    monkeypatch.setattr(Trainer, "train_epoch", dying)
    assert main(["train", str(recipe_file), "train.epochs=2"]) != 0
    monkeypatch.setattr(Trainer, "train_epoch", original)
    (run,) = (tmp_path / "runs").glob("cli-*")
    assert (run / "checkpoints" / "last.pt").is_file() and not (run / "adapter").exists()
    assert main(["resume", str(run), "train.workers=0"]) == 0
    assert (run / "adapter" / "adapter.safetensors").is_file()
    hist = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2]  # counted from 1, as the log and best_epoch count
    # TensorBoard: the run's own events (its folder is the run), x = batches continued across the resume
    # (24 toy images in batches of 8: 3 per epoch), and the HParams experiment that 'train' writes.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("progress/epoch")] == [(3, 1), (6, 2)]
    # (the HParams experiment summary is written by a 'train' that ends; a killed one's resume has the sessions)
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")


def test_compare_folder_names(tmp_path):
    """The compare suffix is added once; a failed start leaves no empty folder, a started run's files stay."""
    from types import SimpleNamespace

    from visionpeft.tasks.compare import new_run_dir, remove_empty_tree

    for name, expected in [("bccd-compare", "bccd-compare-2"), ("compare_cnn", "compare_cnn-2"),
                           ("quickstart", "quickstart-compare-2"), ("comparison", "comparison-compare-2")]:
        path = new_run_dir(SimpleNamespace(name=name, output=str(tmp_path)), "-compare")
        assert path.name.startswith(expected), (name, path.name)
    empty = tmp_path / "empty"
    (empty / "00-full" / "adapter").mkdir(parents=True)
    assert remove_empty_tree(empty) and not empty.exists()
    kept = tmp_path / "kept"
    (kept / "00-full").mkdir(parents=True)
    (kept / "00-full" / "recipe.yaml").write_text("name: x\n")
    assert not remove_empty_tree(kept) and (kept / "00-full" / "recipe.yaml").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "{recipe}", "train.epoch=3"], "train.epoch: unknown key; did you mean 'epochs'?"),
        (["train", "{recipe}", "data=/nonexistent/x.yaml"], "data: /nonexistent/x.yaml does not exist"),
        (["eval", "{tmp}/toy"], "not a run directory"),
        (["train", "{tmp}/nope.yaml"], "recipe file not found"),
        (["params", "resnet_does_not_exist"], "is not a timm model"),
    ],
)
def test_errors_are_one_line_exit_2(recipe_file, tmp_path, capsys, argv, message):
    argv = [a.format(recipe=recipe_file, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_params(capsys):
    assert main(["params", "test_efficientnet", "--num-classes", "3", "--strategy",
                 "[{method: head}]", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # test_efficientnet: 256 pooled features -> 3 classes.
    assert report["trainable"] == 256 * 3 + 3 and report["total"] > report["trainable"]


def test_module_entry_point():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "visionpeft", "--help"], capture_output=True, text=True,
                         check=True)
    assert "compare" in out.stdout and "merge" in out.stdout


def test_corrupt_image_in_a_worker_is_one_line(recipe_file, tmp_path, capsys):
    bad = tmp_path / "toy" / "train" / "class_0" / "img_003.png"
    bad.write_bytes(b"garbage")
    assert main(["train", str(recipe_file), "train.workers=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visionpeft: error: ") and "img_003.png: cannot read this image" in err
    assert err.count("\n") == 1
    # With skip_bad_images the run goes on and records the skipped file.
    assert main(["train", str(recipe_file), "dataset.skip_bad_images=true"]) == 0
    (run,) = [p for p in (tmp_path / "runs").iterdir() if (p / "metrics.json").is_file()]
    assert json.loads((run / "data.json").read_text())["skipped_bad_images"] == {"train": 1, "val": 0}


def test_train_says_that_seeds_are_for_compare(recipe_file, tmp_path, capsys):
    """``seeds`` is a compare field: ``train`` trains once and says so instead of ignoring it silently."""
    assert main(["train", str(recipe_file), "seeds=3", "tensorboard=false"]) == 0
    err = capsys.readouterr().err
    assert "'seeds' and 'lr_grid' apply to 'visionpeft compare'" in err and "seed 0" in err
    assert len(list((tmp_path / "runs").glob("cli-*"))) == 1  # one run, not three


def test_params_json_stdout_is_only_json_on_a_first_ultralytics_import(tmp_path):
    """A fresh Ultralytics config dir makes Ultralytics announce its new settings file on import; with --json
    that announcement must not land in stdout (a program reading the JSON would fail)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "fresh"), "YOLO_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "visionpeft", "params", "test_efficientnet", "--num-classes", "3",
                          "--strategy", "head", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["trainable"] == 256 * 3 + 3  # test_efficientnet: 256 features -> 3 classes
