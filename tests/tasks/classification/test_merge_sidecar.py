"""The ``load`` line written beside a merged timm model runs as written and rebuilds the merged model.

A ViT trained at a non-default size (its position embeddings have one row per patch) and a CNN; the line is
executed in a fresh interpreter and its model's outputs are compared with the run's adapted model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from visionpeft.data.toy import make_toy_imagefolder
from visionpeft.recipe import parse_recipe
from visionpeft.tasks.classification import TASK

# Runs the sidecar's line, then the model it built on a saved input; writes the output.
RUNNER = """
import json, sys, torch
side = json.load(open(sys.argv[1]))
exec(side["load"])
model.eval()
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2])), sys.argv[3])
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_imagefolder(tmp_path_factory.mktemp("toy"), classes=3, train_per_class=4, val_per_class=2,
                                size=24)


@pytest.mark.parametrize("model, img_size, suffix", [
    ("test_vit", 64, ".safetensors"),        # timm's default is 160 px: pos_embed 17 rows here vs 101
    ("test_efficientnet", 32, ".pt"),
])
def test_sidecar_load_line_rebuilds_the_merged_model(toy, tmp_path, model, img_size, suffix):
    r = parse_recipe({
        "name": "side", "model": model, "data": str(toy), "output": str(tmp_path), "seed": 0,
        "strategies": [{"method": "lora", "rank": 2}, {"method": "head"}],
        "train": {"epochs": 1, "batch_size": 4, "workers": 0, "progress": False},
        "optim": {"lr": 0.05, "warmup_epochs": 0},
        "augment": {"img_size": img_size, "random_resized_crop": False, "hflip": 0.0, "color_jitter": 0.0},
    })
    TASK.train(r, list(r.strategies), tmp_path / "run", "lora")
    out = TASK.merge(tmp_path / "run", tmp_path / f"merged{suffix}")
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["create_kwargs"] == {"num_classes": 3, **({"img_size": img_size} if "vit" in model else {})}
    x = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    done = subprocess.run([sys.executable, "-c", RUNNER, str(out.with_suffix(".json")), str(tmp_path / "x.pt"),
                           str(tmp_path / "y.pt")], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    _, adapted, _, _ = TASK.load_run(tmp_path / "run")
    with torch.no_grad():
        expected = adapted.eval()(x)
    got = torch.load(tmp_path / "y.pt")
    assert got.shape == (2, 3)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, img_size, expect_size", [
    ("deit_tiny_distilled_patch16_224", 64, True),  # VisionTransformerDistilled(*args, **kwargs) passes it on
    ("test_vit", 96, True),
    ("test_efficientnet", 64, False),              # a CNN takes any size: no img_size argument
])
def test_create_kwargs_rebuild_the_architecture(name, img_size, expect_size):
    import timm

    from visionpeft.backends.timm import build_model, create_kwargs

    model = build_model(name, 3, img_size=img_size)
    kwargs = create_kwargs(model, 3, img_size)
    assert ("img_size" in kwargs) is expect_size and kwargs["num_classes"] == 3
    timm.create_model(name, **kwargs).load_state_dict(model.state_dict(), strict=True)
