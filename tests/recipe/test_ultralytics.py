"""The detection recipe schema and the shipped detection recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionpeft.errors import ConfigError
from visionpeft.packaged import RECIPES_DIR
from visionpeft.recipe import load_recipe, parse_recipe
from visionpeft.recipe.ultralytics import UltralyticsRecipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((RECIPES_DIR / "detection").rglob("*.yaml"))
BASE = {"task": "detection", "model": "w.pt", "data": "d.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, UltralyticsRecipe)
    assert recipe.model.endswith(".pt") and recipe.data.endswith("data.yaml")
    assert recipe.ultralytics["epochs"] >= 1 and "imgsz" in recipe.ultralytics
    assert recipe.compare_runs()  # every recipe also works with `visionpeft compare`


def test_recipe_set_covers_the_issue():
    names = {p.stem for p in RECIPES}
    assert {"full", "freeze10", "head", "lora", "lora_freeze", "bitfit", "norm", "compare"} <= names
    runs = load_recipe(RECIPES_DIR / "detection" / "compare.yaml").compare_runs()
    assert list(runs)[0] == "full" and len(runs) >= 6


def test_ultralytics_section_is_typed_and_passes_through():
    recipe = parse_recipe({**BASE, "ultralytics": {"epochs": 3, "lr0": "3e-4", "mosaic": 0.5}})
    assert recipe.ultralytics == {"epochs": 3, "lr0": 3e-4, "mosaic": 0.5}
    args = recipe.train_args()
    assert args["plots"] is False and args["epochs"] == 3  # visionpeft defaults, then the recipe


def test_overrides_reach_the_ultralytics_section(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("task: detection\nmodel: w.pt\ndata: d.yaml\nultralytics: {epochs: 30}\n")
    recipe = load_recipe(path, ["ultralytics.epochs=2", "ultralytics.imgsz=160", "model=other.pt"])
    assert recipe.ultralytics == {"epochs": 2, "imgsz": 160} and recipe.model == "other.pt"


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"lr": 0.01}, r"ultralytics\.lr: not an Ultralytics training argument; did you mean 'lr0'"),
        ({"mosiac": 1.0}, r"ultralytics\.mosiac: .*did you mean 'mosaic'"),
        ({"freeze": 10}, r"ultralytics\.freeze: set by visionpeft; use a strategy: \{method: freeze, n: 10\}"),
        ({"data": "x.yaml"}, r"ultralytics\.data: set by visionpeft; use the top-level 'data' key"),
        ({"epochs": "many"}, r"'epochs' must be an int"),
        ({"mosaic": 2.0}, r"'mosaic=2.0' is an invalid value"),
    ],
)
def test_bad_ultralytics_args(section, match):
    with pytest.raises(ConfigError, match=match):
        parse_recipe({**BASE, "ultralytics": section})


def test_bad_model_and_data_keys():
    with pytest.raises(ConfigError, match="model: expected an Ultralytics '.pt' checkpoint or a model yaml"):
        parse_recipe({**BASE, "model": "resnet50"})
    with pytest.raises(ConfigError, match="data: expected an Ultralytics data yaml"):
        parse_recipe({**BASE, "data": "images/"})
    with pytest.raises(ConfigError, match="ultralitics: unknown key; did you mean 'ultralytics'"):
        parse_recipe({**BASE, "ultralitics": {}})
