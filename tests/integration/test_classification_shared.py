"""Real material from ../shared: ImageNet EfficientNet-Lite0 on flowers5_128 and hymenoptera.

A short compare where every strategy clearly beats chance; the report's trainable counts equal the
parameter report of the rebuilt model; eval (load_adapter) and merge reproduce validation accuracy exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import visionpeft
from visionpeft.recipe import parse_recipe
from visionpeft.tasks.classification import TASK
from visionpeft.tasks.compare import run_compare

pytestmark = pytest.mark.integration



def flowers_recipe(shared: Path, out: Path, **train):
    return parse_recipe({
        "name": "flowers", "model": "tf_efficientnet_lite0", "output": str(out), "seed": 0,
        "weights": str(shared / "weights" / "tf_efficientnet_lite0.in1k.safetensors"),
        "data": str(shared / "data" / "flowers5_128"),
        # One rate for every method, set per entry (a compare refuses a shared optim.lr): this test checks
        # the pipeline, not the methods' relative accuracy.
        "compare": {
            "full": [{"method": "full", "lr": 2e-3}],
            "linear_probe": [{"method": "head"}],
            "freeze_6": [{"method": "freeze", "n": 6, "lr": 2e-3}],
            "bitfit": [{"method": "bitfit", "lr": 2e-3}, {"method": "head"}],
            "lora": [{"method": "lora", "rank": 4, "lr": 2e-3}, {"method": "head"}],
        },
        "dataset": {"max_per_class": 24},
        "train": {"epochs": 2, "batch_size": 16, "workers": 0, "progress": False, **train},
        "optim": {"head_lr": 5e-3, "warmup_epochs": 0},
        "augment": {"img_size": 64, "crop_pct": 1.0, "scale": [0.6, 1.0], "hflip": 0.5},
    })


def test_flowers_compare_beats_chance_and_reproduces(shared, tmp_path):
    recipe = flowers_recipe(shared, tmp_path)
    cdir = run_compare(recipe)
    report = json.loads((cdir / "report.json").read_text())
    rows = {r["strategy"]: r for r in report["runs"]}
    assert list(rows) == ["full", "linear_probe", "freeze_6", "bitfit", "lora"]
    for name, row in rows.items():
        assert row["top1_val"] >= 0.45, (name, row["top1_val"])  # chance is 0.2 on 5 classes
    assert "tf_efficientnet_lite0.in1k.safetensors" in (cdir / "report.md").read_text()

    run = cdir / "04-lora"
    _, model, plan, _ = TASK.load_run(run)
    counts = visionpeft.parameter_report(model)
    assert rows["lora"]["trainable_params"] == counts["trainable"] == plan.trainable_count
    assert rows["lora"]["total_params"] == counts["total"]
    # load_adapter (eval) and merge reproduce the run's validation accuracy exactly.
    assert TASK.evaluate(run, "val")["top1"] == rows["lora"]["top1_val"]
    merged = TASK.merge(run, tmp_path / "merged" / "lora.safetensors")
    import timm
    from safetensors.torch import load_file

    from visionpeft.data import build_data, resolve_data_config
    from visionpeft.tasks.classification.trainer import evaluate_model

    plain = timm.create_model("tf_efficientnet_lite0", num_classes=5)
    plain.load_state_dict(load_file(str(merged)), strict=True)
    run_recipe, _, _, meta = TASK.load_run(run)
    data = build_data(run_recipe, resolve_data_config(meta["data_config"], run_recipe.augment), eval_only=True)
    again = evaluate_model(plain, data.val_loader, torch.device("cpu"), data.classes)
    assert again["top1"] == rows["lora"]["top1_val"]


def test_hymenoptera_linear_probe_with_cached_features(shared, tmp_path):
    recipe = parse_recipe({
        "name": "ants_bees", "model": "tf_efficientnet_lite0", "output": str(tmp_path),
        "weights": str(shared / "weights" / "tf_efficientnet_lite0.in1k.safetensors"),
        "data": str(shared / "data" / "hymenoptera_data"), "strategies": [{"method": "head"}],
        "dataset": {"max_per_class": 40},
        "train": {"epochs": 4, "batch_size": 16, "workers": 0, "progress": False, "cache_features": True},
        "optim": {"lr": 1e-2, "warmup_epochs": 0},
        "augment": {"img_size": 160, "random_resized_crop": False, "hflip": 0.0},
    })
    res = TASK.train(recipe, list(recipe.strategies), tmp_path / "run", "probe")
    assert res.metrics["top1"] >= 0.85, res.metrics  # ImageNet features separate ants from bees
    hist = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert len(hist) == 4 and res.extra["cache_seconds"] > 0
