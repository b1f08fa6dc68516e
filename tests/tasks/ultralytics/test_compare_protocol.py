"""The compare protocol on detection: coco8 (copied to tmp) with a ``test:`` split, two seeds, test mAP reported."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

pytest.importorskip("ultralytics")

from visionpeft.cli import main  # noqa: E402

from ..ultralytics_support import copy_dataset  # noqa: E402

TINY = {"epochs": 1, "imgsz": 64, "batch": 2, "nbs": 2, "warmup_epochs": 0, "workers": 0, "device": "cpu",
        "amp": False}


@pytest.fixture(scope="module")
def compared(shared, tmp_path_factory):
    root = tmp_path_factory.mktemp("detproto")
    data = copy_dataset(shared, "coco8", root)
    for kind in ("images", "labels"):  # a test split of its own (the val images, so it is not empty of boxes)
        shutil.copytree(data.parent / kind / "val", data.parent / kind / "test")
    data.write_text(data.read_text() + "\ntest: images/test\n")
    recipe = root / "det.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "detection", "name": "detproto", "model": str(shared / "weights" / "yolov5nu-cocobackbone.pt"),
        "data": str(data), "output": str(root / "runs"), "tensorboard": False,
        "compare": {"lora": [{"method": "lora", "rank": 4}, {"method": "head"}]}, "ultralytics": TINY}))
    assert main(["compare", str(recipe), "seeds=2"]) == 0
    (cdir,) = (root / "runs").iterdir()
    return {"dir": cdir, "data": data}


def test_test_split_metrics_are_reported(compared):
    cdir = compared["dir"]
    report = json.loads((cdir / "report.json").read_text())
    assert report["protocol"]["headline"] == "map50_95_test" and report["protocol"]["test_split"] is True
    rows = {r["strategy"]: r for r in report["runs"]}
    for row in rows.values():
        for key in ("map50_95_test", "map50_test", "map50_95_val", "map50_95_test_ci_low", "map50_95_test_ci_high",
                    "delta_map50_95_test_vs_full", "delta_map50_95_test_ci_low", "verdict", "time_to_full_val_s"):
            assert row[key] is not None, key
        assert 0.0 <= row["map50_95_test"] <= 1.0 and row["seeds"] == 2
    assert rows["full"]["verdict"] == "baseline"
    # Ultralytics' validator read the test split (its label cache is written beside the labels) ...
    assert (compared["data"].parent / "labels" / "test.cache").is_file()
    # ... and each seed run's test values are those of its best checkpoint on 'test' (eval_test.json).
    for run in report["seed_runs"]:
        saved = json.loads((cdir / run["run_dir"] / "eval_test.json").read_text())
        assert run["map50_95_test"] == pytest.approx(saved["map50_95"]) and run["map50_test"] == saved["map50"]
    md = (cdir / "report.md").read_text()
    assert "map50_95_test" in md and "held-out **test** split" in md and "selection-biased" not in md


def test_seeds_change_the_detection_runs(compared):
    from safetensors.torch import load_file

    cdir = compared["dir"]
    runs = {p.name: p for p in (cdir / "01-lora").iterdir()}
    assert sorted(runs) == ["seed-0", "seed-1"]
    seeds = [yaml.safe_load((runs[f"seed-{s}"] / "recipe.yaml").read_text())["seed"] for s in (0, 1)]
    assert seeds == [0, 1]
    a, b = (load_file(str(runs[f"seed-{s}"] / "adapter" / "adapter.safetensors")) for s in (0, 1))
    lora_a = [k for k in a if k.endswith("lora_A")]
    assert lora_a and any(not a[k].equal(b[k]) for k in lora_a)  # adapter initialisation follows the seed
    curve = json.loads((cdir / "report.json").read_text())["runs"][1]["time_to_full_reached"]
    assert curve.endswith("/2")  # the validation curve (results.csv time column) was read for both seeds


def test_detection_verdict_is_the_bootstrap_over_images_and_report_rebuilds_it(compared, capsys):
    from visionpeft.image_records import read_records
    from visionpeft.report.image_statistics import statistic

    cdir = compared["dir"]
    before = json.loads((cdir / "report.json").read_text())
    lora = next(r for r in before["runs"] if r["strategy"] == "lora")
    # Every seed run saved what the validator scored per test image, and mAP recomputed from those records on
    # all images (one count each) is the validator's own test mAP.
    for run in before["seed_runs"]:
        rec = read_records(cdir / run["run_dir"], "test")
        assert rec is not None and rec.kind == "ap" and rec.metric == "map50_95" and len(rec.files) == 4
        assert statistic(rec)(np.ones((1, 4)))[0] == pytest.approx(run["map50_95_test"], abs=1e-12)
    assert lora["verdict_basis"] == "bootstrap over 2 seeds x 4 test images, map50_95 recomputed"
    assert lora["delta_map50_95_test_boot_low"] <= lora["delta_map50_95_test_vs_full"] <= \
        lora["delta_map50_95_test_boot_high"]
    assert lora["verdict"] in ("better", "worse", "tied") and lora["bootstrap_ms"] > 0
    assert lora["lr_source"] == "default" and lora["lr"] is None  # Ultralytics' lr0
    assert main(["report", str(cdir)]) == 0
    after = json.loads((cdir / "report.json").read_text())
    keys = ["strategy", "map50_95_test", "delta_map50_95_test_ci_low", "delta_map50_95_test_boot_low", "verdict",
            "verdict_basis", "lr_source"]
    assert [[r[k] for k in keys] for r in after["runs"]] == [[r[k] for k in keys] for r in before["runs"]]
    assert "Verdicts rest on the seed-only t-interval" not in (cdir / "report.md").read_text()


def test_lr_grid_auto_centres_on_lr0_and_each_grid_run_trains_its_rate(shared, tmp_path):
    data = copy_dataset(shared, "coco8", tmp_path)
    recipe = tmp_path / "auto.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "detect", "name": "auto", "model": str(shared / "weights" / "yolov5nu-cocobackbone.pt"),
        "data": str(data), "output": str(tmp_path / "runs"), "tensorboard": False, "lr_grid": {"lora": "auto"},
        "compare": {"lora": [{"method": "lora", "rank": 4}, {"method": "head"}]},
        "ultralytics": {**TINY, "optimizer": "AdamW", "lr0": 0.001}}))
    assert main(["compare", str(recipe)]) == 0
    (cdir,) = (tmp_path / "runs").iterdir()
    report = json.loads((cdir / "report.json").read_text())
    sweep = [p for p in report["lr_sweeps"] if p["strategy"] == "lora"]
    assert [p["lr"] for p in sweep] == [3e-4, 1e-3, 3e-3, 1e-2]
    lora = next(r for r in report["runs"] if r["strategy"] == "lora")
    assert lora["lr_source"] == "auto" and lora["lr"] == next(p["lr"] for p in sweep if p["chosen"])
    for point in sweep:  # each grid run set its rate on the LoRA entry (split_groups_by_owner: group lr = rate)
        log = yaml.safe_load((cdir / point["run_dir"] / "recipe.yaml").read_text())
        assert log["strategies"][0]["lr"] == point["lr"] and "lr" not in log["strategies"][1]
