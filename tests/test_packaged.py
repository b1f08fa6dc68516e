"""Recipes and the quickstart's digits ship inside the package and are found by name from any folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from visionpeft.errors import ConfigError
from visionpeft.packaged import ASSETS, find_recipe, packaged_path, packaged_recipes, recipe_summary
from visionpeft.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def test_packaged_recipes_have_names_and_one_line_summaries():
    recipes = packaged_recipes()
    assert {"quickstart", "classification/lora_vit", "detection/compare", "segment/lora"} <= set(recipes)
    for name, path in recipes.items():
        summary = recipe_summary(path)
        assert summary and "\n" not in summary and len(summary) <= 100, name
    assert recipe_summary(recipes["classification/full"]) == "Full fine-tuning: every parameter trains"


@pytest.mark.parametrize("arg", ["quickstart", "quickstart.yaml", "recipes/quickstart.yaml"])
def test_recipe_found_by_name_from_any_folder(arg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_recipe(arg) == ASSETS / "recipes" / "quickstart.yaml"
    recipe = load_recipe(arg, ["train.epochs=1"])
    # the recipe's relative data path (datasets/digits.yaml) is the shipped descriptor
    assert Path(recipe.data) == ASSETS / "datasets" / "digits.yaml" and Path(recipe.data).is_file()
    assert recipe.train.epochs == 1


def test_a_path_that_exists_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    own = tmp_path / "recipes" / "quickstart.yaml"
    own.write_text("name: mine\nmodel: test_efficientnet\ndata: datasets/digits.yaml\n"
                   "strategies: [{method: head}]\n")
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "digits.yaml").write_text("name: local\n")
    assert find_recipe("recipes/quickstart.yaml") == Path("recipes/quickstart.yaml")
    assert load_recipe("recipes/quickstart.yaml").name == "mine"
    assert packaged_path("datasets/digits.yaml") == "datasets/digits.yaml"  # the local file, not the shipped one
    assert packaged_path("pypi:efficientnet-lite0") == "pypi:efficientnet-lite0"
    assert packaged_path("tf_efficientnet_lite0") == "tf_efficientnet_lite0"
    assert packaged_path("../assets/datasets/digits.yaml") == "../assets/datasets/digits.yaml"


def test_unknown_recipe_names_near_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"recipe file not found: classification/lora_vitt .*did you mean "
                                          r"classification/lora_vit"):
        find_recipe("classification/lora_vitt")


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "visionpeft", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def test_cli_recipes_lists_what_ships_and_unknown_name_exits_2(tmp_path):
    out = _cli("recipes", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert "LoRA on a ViT" in rows["classification/lora_vit"] and "quickstart" in rows
    bad = _cli("train", "classification/lora_vitt", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "did you mean classification/lora_vit" in bad.stderr


def test_plain_install_ships_recipes_and_digits(tmp_path):
    """A non-editable wheel, installed into a bare folder, runs the packaged recipes from another folder."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "visionpeft", src / "visionpeft", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl"), str(src)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "whl").glob("visionpeft-*.whl"))
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = ("import visionpeft; from pathlib import Path; from visionpeft.recipe import load_recipe; "
             "r = load_recipe('quickstart'); print(visionpeft.__file__); print(r.data); "
             "print(len(list((Path(r.data).parent / 'digits').rglob('*.png')))); "
             "print(load_recipe('segment/lora').model)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=elsewhere, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()  # Ultralytics may print its settings notice before the last line
    (module, data, pngs), seg_model = lines[:3], lines[-1]
    assert module.startswith(str(site)) and data.startswith(str(site)) and int(pngs) == 1797
    assert seg_model.startswith(str(site)) and Path(seg_model).is_file()  # models/yolov5nu-seg.yaml ships too
    listed = _cli("recipes", cwd=elsewhere, env=env)
    assert listed.returncode == 0 and "classification/lora_vit" in listed.stdout
    assert len([line for line in listed.stdout.splitlines() if "/" in line.split(" ")[0]]) == \
        len(packaged_recipes()) - 1  # every recipe but quickstart has a folder in its name
