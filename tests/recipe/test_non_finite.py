"""Issue 23 #4: every numeric setting that must be finite is checked (NaN / +-inf refused with the field path).

``optim.lr=.inf`` used to be accepted (rates and loss became NaN, the run reported chance accuracy) and
``strategies.0.lr=.inf`` silently fell back to the default (pydantic wrote ``inf`` as JSON ``null``).
"""

from __future__ import annotations

import math

import pytest

import visionpeft
from visionpeft.errors import ConfigError
from visionpeft.recipe import load_recipe

from ..fixtures import tiny_cnn

CLASSIFICATION = [
    ("optim.lr=.inf", "optim.lr"), ("optim.lr=-.inf", "optim.lr"), ("optim.lr=.nan", "optim.lr"),
    ("optim.head_lr=.inf", "optim.head_lr"), ("optim.weight_decay=.inf", "optim.weight_decay"),
    ("optim.min_lr=.inf", "optim.min_lr"), ("optim.warmup_lr=.nan", "optim.warmup_lr"),
    ("train.clip_grad=.inf", "train.clip_grad"), ("train.ema_decay=.nan", "train.ema_decay"),
    ("augment.scale=[.nan, 1.0]", "augment.scale.0"), ("augment.color_jitter=.inf", "augment.color_jitter"),
    ("strategies.0.lr=.inf", "strategies.0.lr"), ("strategies.0.lr=.nan", "strategies.0.lr"),
    ("strategies.0.weight_decay=.inf", "strategies.0.weight_decay"), ("strategies.0.alpha=.inf", "strategies.0.alpha"),
    ("strategies.0.dropout=.nan", "strategies.0.dropout"), ("lr_grid={lora: [.inf]}", "lr_grid.lora"),
]


@pytest.mark.parametrize(("override", "field"), CLASSIFICATION, ids=[c[0] for c in CLASSIFICATION])
def test_classification_recipe_refuses_non_finite(override: str, field: str) -> None:
    base = ["strategies=[{method: lora, rank: 2}, {method: head}]", "compare={lora: [{method: lora}]}"]
    with pytest.raises(ConfigError) as info:
        load_recipe("recipes/quickstart.yaml", [*base, override])
    msg = str(info.value)
    assert f"{field}:" in msg and ("finite" in msg or "positive learning rates" in msg) and "\n" not in msg


def test_a_finite_strategy_lr_is_kept_not_dropped() -> None:
    r = load_recipe("recipes/quickstart.yaml", ["strategies=[{method: head}]", "strategies.0.lr=1e-2"])
    assert r.strategies[0]["lr"] == 0.01


def test_compare_entries_refuse_non_finite() -> None:
    with pytest.raises(ConfigError, match=r"compare\.full\.0\.lr: Input should be a finite number"):
        load_recipe("recipes/quickstart.yaml", ["compare.full.0.lr=.inf"])


DETECTION = ["ultralytics.lr0=.inf", "ultralytics.lr0=.nan", "ultralytics.lrf=.inf", "ultralytics.momentum=.nan",
             "ultralytics.weight_decay=.inf", "ultralytics.box=.inf", "ultralytics.fliplr=.nan",
             "ultralytics.warmup_epochs=.inf", "strategies.0.lr=.inf"]


@pytest.mark.parametrize("override", DETECTION)
def test_detection_recipe_refuses_non_finite(override: str) -> None:
    pytest.importorskip("ultralytics")
    field = override.split("=")[0]
    with pytest.raises(ConfigError) as info:
        load_recipe("recipes/detection/bitfit.yaml", [override])
    msg = str(info.value)
    assert field in msg and ("finite" in msg or "nan" in msg.lower() or "inf" in msg.lower()), msg


@pytest.mark.parametrize("entry", [{"method": "lora", "alpha": math.inf}, {"method": "bitfit", "lr": math.nan},
                                   {"method": "ssf", "weight_decay": math.inf}, {"method": "head", "lr": -math.inf}])
def test_python_api_refuses_non_finite(entry: dict) -> None:
    model = tiny_cnn()
    with pytest.raises(ConfigError, match=r"strategies\.0\.\w+: Input should be a finite number"):
        visionpeft.apply(model, [entry])
    assert visionpeft.get_plan(model) is None
