"""Every YAML under recipes/ (recursively) validates; classification recipes also apply to their model."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionpeft.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").rglob("*.y*ml"))


def test_recipes_exist():
    names = {p.relative_to(REPO / "recipes").as_posix() for p in RECIPES}
    assert "quickstart.yaml" in names
    for required in ("full", "linear_probe", "freeze", "lora_cnn", "lora_vit", "vpt_shallow", "vpt_deep",
                     "bitfit", "compare_cnn"):
        assert f"classification/{required}.yaml" in names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(REPO / "recipes").as_posix())
def test_recipe_validates(path, monkeypatch):
    monkeypatch.chdir(REPO)  # data paths in recipes are relative to the repository root
    recipe = load_recipe(path)
    assert recipe.strategies or recipe.compare
    if recipe.task != "classification":
        return
    import torch

    import visionpeft
    from visionpeft.backends.timm import build_model
    from visionpeft.data import load_descriptor

    load_descriptor(recipe.data)
    for name, strategies in recipe.compare_runs().items():
        if name == "full" and recipe.compare is not None:
            continue
        torch.manual_seed(0)
        model = build_model(recipe.model, 10)  # random init: only the structure matters here
        plan = visionpeft.apply(model, strategies)
        assert plan.trainable_count > 0, name
