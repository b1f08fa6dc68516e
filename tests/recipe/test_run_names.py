"""Issue 23 #9: a run name may be any YAML scalar (``name=2024`` was "Input should be a valid string")."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import visionpeft
from visionpeft.cli import main
from visionpeft.errors import ConfigError
from visionpeft.recipe import load_recipe

#: Recipes ship as package data; ``load_recipe`` finds ``recipes/...`` there when no such file exists here.
ASSETS = Path(visionpeft.__file__).parent / "assets"

SCALARS = [("2024", "2024"), ("1.5", "1.5"), ("true", "true"), ("no", "false"), ("2024-01-05", "2024-01-05"),
           ("0", "0"), ("-3", "-3"), ("'007'", "007"), ("run 1", "run 1")]


@pytest.mark.parametrize(("text", "name"), SCALARS, ids=[t for t, _ in SCALARS])
@pytest.mark.parametrize("recipe", ["recipes/quickstart.yaml", "recipes/detection/bitfit.yaml"])
def test_any_scalar_is_a_name_in_overrides_and_files(tmp_path, recipe, text, name):
    if "detection" in recipe:
        pytest.importorskip("ultralytics")
    assert load_recipe(recipe, [f"name={text}"]).name == name
    doc = yaml.safe_load((ASSETS / recipe).read_text())
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc).replace(f"name: {doc['name']}", f"name: {text}", 1))
    assert load_recipe(path).name == name


@pytest.mark.parametrize("text", ["null", "[a]", "{a: 1}", "''"])
def test_no_name_is_still_one_line(text):
    if text == "''":  # an empty name is text: accepted like any other string
        assert load_recipe("recipes/quickstart.yaml", [f"name={text}"]).name == ""
        return
    with pytest.raises(ConfigError, match=r"name: expected a name \(text, or any number or date\)"):
        load_recipe("recipes/quickstart.yaml", [f"name={text}"])


def test_compare_and_grid_run_names_may_be_numbers():
    r = load_recipe("recipes/quickstart.yaml", ["compare={2024: [{method: lora}], 7: [bitfit]}",
                                               "lr_grid={2024: [1e-3, 3e-3]}"])
    assert list(r.compare) == ["2024", "7"] and r.lr_grid == {"2024": [1e-3, 3e-3]}


def test_a_numeric_run_name_trains(tmp_path):
    from visionpeft.data.toy import make_toy_imagefolder

    toy = make_toy_imagefolder(tmp_path / "toy", classes=2, train_per_class=4, val_per_class=2, size=16)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "model": "test_efficientnet", "data": str(toy),
                                      "output": str(tmp_path / "runs"), "strategies": [{"method": "head"}],
                                      "augment": {"img_size": 32},
                                      "train": {"epochs": 1, "batch_size": 4, "workers": 0, "progress": False,
                                                "device": "cpu"}}))
    assert main(["train", str(recipe), "name=2024"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("2024-") and yaml.safe_load((run / "recipe.yaml").read_text())["name"] == "2024"
