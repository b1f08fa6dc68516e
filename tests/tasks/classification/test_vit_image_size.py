"""ViTs run at the recipe's image size (timm img_size= at creation, position embeddings resampled), or the
recipe is refused up front with one line (issue 8: VPT on vit_tiny_patch16_224 at img_size 32 crashed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from visionpeft.backends.timm import build_model
from visionpeft.cli import main
from visionpeft.data.toy import make_toy_imagefolder
from visionpeft.errors import ConfigError
from visionpeft.recipe import parse_recipe
from visionpeft.tasks.classification import TASK

VIT_FILE = "weights/vit_tiny_patch16_224.in1k.safetensors"


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_imagefolder(tmp_path_factory.mktemp("toy"), classes=3, train_per_class=4, val_per_class=2,
                                size=24)


def doc(toy: Path, out: Path, size: int, strategies: list, model: str = "vit_tiny_patch16_224", **top) -> dict:
    return {"name": "vit", "model": model, "data": str(toy), "output": str(out), "strategies": strategies,
            "train": {"epochs": 1, "batch_size": 4, "workers": 0, "progress": False, "max_steps_per_epoch": 1},
            "augment": {"img_size": size}, **top}


def test_vpt_on_vit_tiny_at_32_px_trains_evaluates_and_reloads(toy, tmp_path):
    """The issue's example, exactly: VPT on vit_tiny_patch16_224 with augment.img_size: 32."""
    r = parse_recipe(doc(toy, tmp_path, 32, [{"method": "vpt", "tokens": 5, "mode": "deep"}, {"method": "head"}]))
    res = TASK.train(r, list(r.strategies), tmp_path / "run", "vpt")
    assert 0.0 <= res.metrics["top1"] <= 1.0
    _, model, _, _ = TASK.load_run(tmp_path / "run")
    assert tuple(model.pos_embed.shape) == (1, (32 // 16) ** 2 + 1, 192)  # a 2x2 patch grid + class token
    assert TASK.evaluate(tmp_path / "run")["top1"] == res.metrics["top1"]


@pytest.mark.parametrize("strategies", [[{"method": "lora", "rank": 2}, {"method": "head"}], [{"method": "full"}]])
def test_other_strategies_at_64_px(toy, tmp_path, strategies):
    r = parse_recipe(doc(toy, tmp_path, 64, strategies))
    TASK.train(r, list(r.strategies), tmp_path / "run", "x")


def test_size_not_a_multiple_of_the_patch_is_one_line_exit_2(toy, tmp_path, capsys):
    with pytest.raises(ConfigError, match="img_size: 40 px is not a multiple of .* patch size 16; use 32 or 48"):
        build_model("vit_tiny_patch16_224", 3, img_size=40)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc(toy, tmp_path, 32, [{"method": "vpt"}, {"method": "head"}])))
    assert main(["train", str(path), "augment.img_size=40"]) == 2
    err = capsys.readouterr().err
    assert "augment.img_size: 40 px is not a multiple" in err and err.count("\n") == 1
    assert main(["train", str(path)]) == 0  # the CLI at 32 px runs


def test_cnn_ignores_img_size():
    model = build_model("test_efficientnet", 3, img_size=40)
    assert model(torch.randn(1, 3, 40, 40)).shape == (1, 3)


def test_pretrained_hub_name_with_local_file_resamples_position_embeddings(shared):
    """timm's hub tag + weights=FILE loads offline at 48 px; pos_embed equals timm's own resampling."""
    from safetensors.torch import load_file
    from timm.layers import resample_abs_pos_embed

    path = shared / VIT_FILE
    model = build_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", 5, weights=path, img_size=48)
    src = load_file(str(path))
    want = resample_abs_pos_embed(src["pos_embed"], new_size=(3, 3), num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.detach(), want)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight.detach(), src["blocks.0.attn.qkv.weight"])
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 5)
