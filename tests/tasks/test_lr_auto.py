"""``lr_grid: auto``: the grid around each run's own rate, its validation, and a compare that uses it."""

from __future__ import annotations

import json

import pytest
import yaml

from visionpeft.cli import main
from visionpeft.data.toy import make_toy_imagefolder
from visionpeft.errors import ConfigError
from visionpeft.recipe import parse_recipe
from visionpeft.tasks.protocol import AUTO_FACTORS, lr_grids, lr_source

COMPARE = {"lora": [{"method": "lora", "rank": 2}, {"method": "head"}], "probe": [{"method": "head"}],
           "bitfit_own": [{"method": "bitfit", "lr": 2e-3}, {"method": "head"}]}


def _doc(**extra) -> dict:
    return {"name": "auto", "model": "test_efficientnet", "data": "unused", "compare": COMPARE, **extra}


def test_auto_for_every_run_centres_on_each_runs_own_rate():
    recipe = parse_recipe(_doc(lr_grid="auto"))
    grids = lr_grids(recipe, recipe.compare_runs())
    assert AUTO_FACTORS == (0.3, 1.0, 3.0, 10.0)
    # full: its default 1e-4; lora: 1e-3; bitfit_own: the entry's 2e-3; probe trains only the head: no grid.
    assert grids == {"full": ([3e-5, 1e-4, 3e-4, 1e-3], "auto"), "lora": ([3e-4, 1e-3, 3e-3, 1e-2], "auto"),
                     "bitfit_own": ([6e-4, 2e-3, 6e-3, 2e-2], "auto")}


def test_auto_per_run_next_to_listed_rates_and_the_sgd_defaults():
    recipe = parse_recipe(_doc(lr_grid={"lora": "auto", "bitfit_own": [1e-3, 1e-2]}, optim={"name": "sgd"}))
    grids = lr_grids(recipe, recipe.compare_runs())
    assert grids == {"lora": ([3e-3, 1e-2, 3e-2, 1e-1], "auto"), "bitfit_own": ([1e-3, 1e-2], "lr_grid")}


def test_rate_sources():
    recipe = parse_recipe(_doc())
    runs = recipe.compare_runs()
    assert [lr_source(recipe, runs[k]) for k in ("full", "lora", "bitfit_own")] == ["default", "default", "given"]
    assert lr_source(parse_recipe(_doc(compare={"lora": COMPARE["lora"]}, optim={"lr": 5e-4})),
                     COMPARE["lora"]) == "given"


@pytest.mark.parametrize("value, message", [
    ("autoo", "expected 'auto' or a mapping"),
    ({"lora": "automatic"}, "lr_grid.lora: expected auto or a non-empty list"),
    ({"probe": "auto"}, "lr_grid.probe: the run trains only the head"),
])
def test_bad_auto_values_name_the_field(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe(_doc(lr_grid=value))


def _detection(**ultralytics) -> object:
    return parse_recipe({"task": "detection", "model": "yolov8n.yaml", "data": "coco8.yaml", "lr_grid": "auto",
                         "compare": {"lora": [{"method": "lora"}, {"method": "head"}],
                                     "ssf_own": [{"method": "ssf", "lr": 0.02}, {"method": "head"}]},
                         "ultralytics": ultralytics})


def test_auto_on_an_ultralytics_recipe_centres_on_lr0_or_the_entrys_rate():
    pytest.importorskip("ultralytics")
    recipe = _detection(optimizer="AdamW", lr0=0.001)
    assert lr_grids(recipe, recipe.compare_runs()) == {
        "full": ([3e-4, 1e-3, 3e-3, 1e-2], "auto"), "lora": ([3e-4, 1e-3, 3e-3, 1e-2], "auto"),
        "ssf_own": ([6e-3, 2e-2, 6e-2, 2e-1], "auto")}
    sgd = _detection(optimizer="SGD")  # Ultralytics' own lr0 default, 0.01
    assert lr_grids(sgd, sgd.compare_runs())["lora"] == ([3e-3, 1e-2, 3e-2, 1e-1], "auto")


def test_auto_with_ultralytics_optimizer_auto_is_refused_with_what_to_do_instead():
    pytest.importorskip("ultralytics")
    recipe = _detection()  # optimizer: auto (Ultralytics' default) ignores lr0
    with pytest.raises(ConfigError, match=r"lr_grid.full: auto centres the grid on ultralytics.lr0, which "
                                          r"optimizer=auto ignores .* ultralytics.optimizer=AdamW .* list the rates"):
        lr_grids(recipe, recipe.compare_runs())
    # an entry with its own rate needs no lr0 (a grid rate is absolute: split_groups_by_owner scales from the lr0
    # optimizer=auto chose), so that run's grid is still made
    own = parse_recipe({"task": "detection", "model": "yolov8n.yaml", "data": "coco8.yaml",
                        "lr_grid": {"ssf_own": "auto"}, "compare": {"ssf_own": [{"method": "ssf", "lr": 0.02}]}})
    assert lr_grids(own, own.compare_runs()) == {"ssf_own": ([6e-3, 2e-2, 6e-2, 2e-1], "auto")}


def test_a_compare_with_auto_reports_the_chosen_rate_and_its_cost(tmp_path):
    data = make_toy_imagefolder(tmp_path / "toy", classes=2, train_per_class=4, val_per_class=2, size=16)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "name": "auto", "model": "test_efficientnet", "data": str(data), "output": str(tmp_path / "runs"),
        "tensorboard": False, "compare": {"lora": COMPARE["lora"]}, "lr_grid": {"lora": "auto"},
        "train": {"epochs": 1, "batch_size": 4, "workers": 0, "progress": False, "threads": 1},
        "optim": {"warmup_epochs": 0}, "augment": {"img_size": 32, "random_resized_crop": False, "hflip": 0.0}}))
    assert main(["compare", str(path)]) == 0
    (cdir,) = (tmp_path / "runs").iterdir()
    report = json.loads((cdir / "report.json").read_text())
    rows = {r["strategy"]: r for r in report["runs"]}
    sweep = [p for p in report["lr_sweeps"] if p["strategy"] == "lora"]
    assert [p["lr"] for p in sweep] == [3e-4, 1e-3, 3e-3, 1e-2]
    chosen = next(p for p in sweep if p["chosen"])
    assert chosen["val_metric"] == max(p["val_metric"] for p in sweep)
    assert rows["lora"]["lr_source"] == "auto" and rows["lora"]["lr"] == chosen["lr"]
    assert rows["lora"]["sweep_seconds"] == pytest.approx(sum(p["train_seconds"] for p in sweep), abs=0.02)
    assert rows["full"]["lr_source"] == "default" and rows["full"]["sweep_seconds"] == 0
    md = (cdir / "report.md").read_text()
    assert f"{chosen['lr']:g} (auto)" in md and "x 0.3, 1, 3, 10" in md
