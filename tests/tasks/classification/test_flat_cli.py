"""The timm side of the recipe-less command line: ``visionpeft train model=<weights file> data=<folder>
strategies=lora,head epochs=1`` trains from the file's pretrained weights, named after data and strategies."""

from __future__ import annotations

import json

import yaml

from visionpeft.cli import main


def test_timm_recipe_less_train(tmp_path, shared):
    weights = shared / "weights" / "vit_tiny_patch16_224.in1k.safetensors"
    project = tmp_path / "runs"
    assert main(["train", f"model={weights}", f"data={shared / 'data' / 'flowers5_128'}", "strategies=lora,head",
                 "epochs=1", "imgsz=32", "batch=16", "workers=0", "device=cpu", "dataset.max_per_class=4",
                 "progress=false", f"project={project}"]) == 0
    (run_dir,) = project.iterdir()
    assert run_dir.name.startswith("flowers5_128-lora-head-")
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert (recipe["model"], recipe["weights"], recipe["augment"]["img_size"]) == ("vit_tiny_patch16_224",
                                                                                   str(weights), 32)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 < metrics["trainable_params"] < metrics["total_params"] / 10  # LoRA + head, not the whole ViT
