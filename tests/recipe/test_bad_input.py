"""Bad recipes: bounded YAML (alias bombs, absurd nesting), empty override segments, typed Ultralytics values."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from visionpeft.errors import ConfigError
from visionpeft.recipe import apply_overrides, load_recipe
from visionpeft.recipe.ultralytics import validate_ultralytics_args
from visionpeft.safe_yaml import MAX_DEPTH, brief, load_yaml_text

HEAD = "model: test_efficientnet\ndata: datasets/digits.yaml\n"


def alias_bomb(key: str, levels: int = 9) -> str:
    """The 570-byte kind of recipe from the issue: 9 levels of 9 aliases = 9**9 (387 million) leaves."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append(f"{key}: [{','.join([f'*a{levels - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("key", ["seed", "strategies", "train", "name"])
def test_alias_bomb_is_refused_quickly_and_never_expanded(tmp_path, key):
    path = tmp_path / "bomb.yaml"
    path.write_text(HEAD + alias_bomb(key))
    assert path.stat().st_size < 1000
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than 200,000 values") as err:
        load_recipe(path)
    assert time.perf_counter() - t0 < 20  # was 95 s and a MemoryError; a bounded walk takes milliseconds
    assert str(path) in str(err.value) and len(str(err.value)) < 400


def test_small_alias_use_is_still_fine(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(HEAD + "lora: &l {method: lora, rank: 2}\nstrategies: [*l, {method: head}]\n")
    with pytest.raises(ConfigError, match="lora: unknown key"):  # the anchor key itself is not a recipe key
        load_recipe(path)
    path.write_text(HEAD + "strategies: [&l {method: lora, rank: 2}, {method: head}]\ncompare: {a: [*l]}\n")
    assert load_recipe(path).compare["a"][0]["rank"] == 2


@pytest.mark.parametrize("depth", [MAX_DEPTH + 5, 1000])
def test_absurd_nesting_is_one_clear_error(tmp_path, depth):
    path = tmp_path / "deep.yaml"
    path.write_text(HEAD + "seed: " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(ConfigError, match="nested (more than 32 levels deep|too deeply)") as err:
        load_recipe(path)
    assert str(path) in str(err.value)


def test_echoed_values_are_bounded(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(HEAD + "seed: [" + ", ".join(str(i) for i in range(5000)) + "]\n")
    with pytest.raises(ConfigError, match=r"seed: Input should be a valid integer \(got \[0, 1, 2") as err:
        load_recipe(path)
    assert len(str(err.value)) < 400
    assert len(brief("x" * 10_000)) < 250 and len(brief([[list(range(100))] * 100] * 100)) < 250


def test_invalid_yaml_is_one_line_with_position():
    with pytest.raises(ConfigError, match=r"--strategy: not valid YAML: expected ',' or '}'.* at line 1, column 15"):
        load_yaml_text("[{method: lora", "--strategy")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("a..b=1", r"override 'a..b': empty key between dots \(position 2\)"),
        ("train..epochs=1", r"override 'train..epochs': empty key between dots \(position 2\)"),
        (".seed=1", r"override '.seed': empty key between dots \(position 1\)"),
        ("seed.=1", r"override 'seed.': empty key between dots \(position 2\)"),
    ],
)
def test_override_with_an_empty_path_segment(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides({"seed": 0}, [override])


def test_override_value_bomb_is_refused():
    bomb = "[" + ",".join(["&a [1,1,1,1,1,1,1,1,1,1]"] + ["*a"] * 9) + "]"
    assert apply_overrides({}, [f"x={bomb}"])["x"][1] == [1] * 10  # small aliases are fine
    with pytest.raises(ConfigError, match="nested more than 32 levels"):
        apply_overrides({}, ["x=" + "[" * 40 + "]" * 40])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"imgsz": "abc"}, "ultralytics.imgsz: expected a positive image size in pixels such as 640"),
        ({"imgsz": -32}, "ultralytics.imgsz: expected a positive image size"),
        ({"imgsz": [320, "x"]}, "ultralytics.imgsz: expected a positive image size"),
        ({"batch": 0}, r"ultralytics.batch: expected images per batch \(>= 1\), -1"),
        ({"workers": -1}, "ultralytics.workers: expected a number of dataloader workers >= 0"),
        ({"optimizer": "adamz"}, r"ultralytics.optimizer: expected one of \['SGD'"),
        ({"cache": "yes"}, "ultralytics.cache: expected true / false, 'ram' or 'disk'"),
        ({"device": "banana"}, "ultralytics.device: expected cpu, mps, cuda"),
        ({"tracker": 3}, "ultralytics.tracker: expected a string like 'tracktrack.yaml'"),
        ({"epochs": "three"}, "ultralytics: 'epochs=three' is of invalid type str"),
    ],
)
def test_ultralytics_values_are_checked(args, message):
    with pytest.raises(ValueError, match=message):
        validate_ultralytics_args(args)


@pytest.mark.parametrize(
    "args",
    [{"imgsz": 320}, {"imgsz": [320, 256]}, {"batch": -1}, {"batch": 0.7}, {"batch": 16}, {"device": "cpu"},
     {"device": "0,1"}, {"device": [0, 1]}, {"device": "cuda:0"}, {"optimizer": "sgd"}, {"cache": "ram"},
     {"workers": 0}],
)
def test_valid_ultralytics_values_pass(args):
    assert validate_ultralytics_args(args) == args


def test_recipe_with_bad_imgsz_is_refused_at_load(tmp_path: Path):
    path = tmp_path / "det.yaml"
    path.write_text("task: detection\nmodel: yolo11n.yaml\ndata: d.yaml\nultralytics: {imgsz: abc}\n")
    with pytest.raises(ConfigError, match="ultralytics.imgsz: expected a positive image size .* \\(got 'abc'\\)"):
        load_recipe(path)


def test_bare_method_names_in_a_strategy_list(tmp_path: Path):
    path = tmp_path / "r.yaml"
    path.write_text(HEAD + "strategies: [lora, head]\ncompare: {probe: [head]}\n")
    recipe = load_recipe(path)
    assert [s["method"] for s in recipe.strategies] == ["lora", "head"] and recipe.strategies[0]["rank"] == 8
    assert load_recipe(path, ["strategies=[bitfit]"]).strategies[0]["method"] == "bitfit"
    with pytest.raises(ConfigError, match="strategies.0: .*unknown strategy method 'lorra'.*did you mean 'lora'"):
        load_recipe(path, ["strategies=[lorra]"])
