"""Issue 23 #9: a run name may be any YAML scalar (``name=2024`` was "Input should be a valid string")."""

from __future__ import annotations

import pytest
import yaml

from visionpeft.cli import main
from visionpeft.errors import ConfigError
from visionpeft.packaged import find_recipe
from visionpeft.recipe import load_recipe

# A name is the scalar as written (YAML would turn 2024.10 into 2024.1, 1e3 into 1000.0 and no into false).
SCALARS = [("2024", "2024"), ("1.5", "1.5"), ("true", "true"), ("no", "no"), ("2024-01-05", "2024-01-05"),
           ("0", "0"), ("-3", "-3"), ("'007'", "007"), ("run 1", "run 1"), ("1e3", "1e3"), ("2024.10", "2024.10"),
           ("0x1F", "0x1F")]


@pytest.mark.parametrize(("text", "name"), SCALARS, ids=[t for t, _ in SCALARS])
@pytest.mark.parametrize("recipe", ["recipes/quickstart.yaml", "recipes/detection/bitfit.yaml"])
def test_any_scalar_is_a_name_in_overrides_and_files(tmp_path, recipe, text, name):
    if "detection" in recipe:
        pytest.importorskip("ultralytics")
    assert load_recipe(recipe, [f"name={text}"]).name == name
    doc = yaml.safe_load(find_recipe(recipe).read_text())  # the packaged file the name resolves to
    path = tmp_path / "r.yaml"
    doc.setdefault("name", "placeholder")  # packaged Ultralytics recipes name no run (named after data + strategy)
    path.write_text(yaml.safe_dump(doc).replace(f"name: {doc['name']}", f"name: {text}", 1))
    assert load_recipe(path).name == name


@pytest.mark.parametrize("text", ["null", "''"])
def test_no_name_is_named_after_data_and_strategies(text):
    # null and '' give no name: the run is named after what it is (the quickstart compares on digits)
    assert load_recipe("recipes/quickstart.yaml", [f"name={text}"]).name == "digits-compare"
    items = [f"name={text}", "compare=null", "strategies=[{method: freeze, n: 3}, lora]"]
    r = load_recipe("recipes/quickstart.yaml", items)
    assert r.name == "digits-freeze3-lora"


@pytest.mark.parametrize("text", ["[a]", "{a: 1}"])
def test_no_name_is_still_one_line(text):
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
