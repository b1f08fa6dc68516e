"""Recipes: typed validation, did-you-mean errors, key=value overrides, resolved round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from visionpeft.errors import ConfigError
from visionpeft.recipe import TASK_SCHEMAS, apply_overrides, load_recipe, save_resolved
from visionpeft.recipe.classification import ClassificationRecipe

BASE = {
    "name": "t",
    "model": "test_efficientnet",
    "data": "datasets/digits.yaml",
    "strategies": [{"method": "freeze", "n": 2}, {"method": "lora", "rank": 4}, {"method": "head"}],
    "train": {"epochs": 2},
}


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_defaults_and_types(tmp_path):
    r = load_recipe(write(tmp_path, BASE))
    assert isinstance(r, ClassificationRecipe)
    assert r.task == "classification" and r.train.epochs == 2 and r.train.batch_size == 32
    assert r.strategies[1]["method"] == "lora" and r.strategies[1]["rank"] == 4
    # Defaults of the strategy configs are filled in (the resolved recipe documents them).
    assert "alpha" in r.strategies[1]
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        r.train.epochs = 3


def test_overrides_nested_and_list_indices(tmp_path):
    r = load_recipe(write(tmp_path, BASE), ["strategies.1.rank=16", "train.epochs=3", "optim.lr=3e-4",
                                            "train.ema=true", "augment.scale=[0.5,1.0]", "data=/x/y.yaml"])
    assert r.strategies[1]["rank"] == 16
    assert r.train.epochs == 3 and r.train.ema is True
    assert r.optim.lr == pytest.approx(3e-4) and isinstance(r.optim.lr, float)
    assert r.augment.scale == (0.5, 1.0)
    assert r.data == "/x/y.yaml"


def test_override_appends_and_bad_index():
    doc = apply_overrides({"a": [1, 2]}, ["a.2=3", "b.c=4"])
    assert doc == {"a": [1, 2, 3], "b": {"c": 4}}
    with pytest.raises(ConfigError, match=r"index 5 out of range at a\.5"):
        apply_overrides({"a": [1]}, ["a.5=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["epochs"])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("modle=x", r"modle: unknown key; did you mean 'model'"),
        ("train.epoch=3", r"train\.epoch: unknown key; did you mean 'epochs'"),
        ("optim.head_rl=0.1", r"optim\.head_rl: unknown key; did you mean 'head_lr'"),
        ("train.epochs=abc", r"train\.epochs: .*integer"),
        ("train.epochs=0", r"train\.epochs: .*greater than or equal to 1"),
        ("optim.name=adam_w", r"optim\.name: .*'adamw' or 'sgd'"),
        ("strategies.1.rnak=4", r"strategies\.1\.rnak: unknown key; did you mean 'rank'"),
        ("strategies.1.method=lorra", r"unknown strategy method 'lorra'.*did you mean 'lora'"),
        ("compare.x=[{method: nope}]", r"compare\.x\.0: unknown strategy method 'nope'"),
        ("compare.x.0.method=head", r"compare\.x: expected a list of strategies"),
    ],
)
def test_errors_name_the_field(tmp_path, override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_recipe(write(tmp_path, BASE), [override])


def test_unknown_task_and_missing_required(tmp_path):
    with pytest.raises(ConfigError, match=r"task: unknown task 'detetcion'.*did you mean 'detect'"):
        load_recipe(write(tmp_path, {**BASE, "task": "detetcion"}))
    with pytest.raises(ConfigError, match=r"model: Field required"):
        load_recipe(write(tmp_path, {k: v for k, v in BASE.items() if k != "model"}))
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    assert set(TASK_SCHEMAS) >= {"classification", "detect"}


def test_yaml_is_never_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("model: !!python/object/apply:os.system ['echo hacked']\ndata: x\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(path)


def test_save_resolved_round_trip(tmp_path):
    r = load_recipe(write(tmp_path, BASE), ["optim.head_lr=0.01"])
    out = save_resolved(r, tmp_path / "run" / "recipe.yaml")
    again = load_recipe(out)
    assert again == r
    assert yaml.safe_load(out.read_text())["optim"]["head_lr"] == 0.01


def test_compare_runs_full_first(tmp_path):
    doc = {**BASE, "compare": {"lora": [{"method": "lora"}, {"method": "head"}], "full": [{"method": "full"}],
                               "probe": [{"method": "head"}]}}
    runs = load_recipe(write(tmp_path, doc)).compare_runs()
    assert list(runs) == ["full", "lora", "probe"]
    assert runs["full"] == [{"method": "full"}]
    # Without a compare section, compare trains full + the recipe's own strategy list.
    runs = load_recipe(write(tmp_path, BASE)).compare_runs()
    assert list(runs) == ["full", "t"] and runs["t"][1]["method"] == "lora"
