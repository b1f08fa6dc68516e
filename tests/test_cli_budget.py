"""``visionpeft params`` shows what a parameter budget gives before any training; bad budgets exit 2 in one line."""

from __future__ import annotations

import json

import pytest

from visionpeft.cli import main


def _params(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(["params", *argv]) == 0
    return capsys.readouterr().out


def test_params_json_reports_the_budget_of_a_timm_vit(capsys):
    out = _params(capsys, "vit_tiny_patch16_224", "--num-classes", "10", "--strategy",
                  "[{method: lora, budget: 0.01}, {method: head}]", "--json")
    report = json.loads(out)
    (b,) = report["budgets"]
    assert b["method"] == "lora" and b["budget"] == 0.01 and b["allocation"] == "uniform" and b["layers"] == 48
    assert b["rank_min"] >= 1 and b["rank_max"] - b["rank_min"] <= 1
    assert b["rank_mean"] == pytest.approx(sum(b["ranks"].values()) / 48)
    assert b["adapter_params"] == report["by_strategy"]["lora"]
    assert 0.009 <= b["fraction"] <= 0.01
    # The head trains on top of the budget: the report's trainable % includes it, the budget does not.
    assert report["trainable"] == b["adapter_params"] + 192 * 10 + 10
    assert report["labels"] == ["lora budget 1%", "head"]


def test_params_text_on_yolo_names_ranks_and_fraction(capsys):
    out = _params(capsys, "yolov8n.yaml", "--strategy", "[{method: lora, budget: 0.02}]")
    assert "budget          lora: 2% of the model for the adapter alone (the head strategy is not part of it)" in out
    line = next(x for x in out.splitlines() if "uniform allocation over" in x)
    assert "rank min" in line and "max" in line and "mean" in line
    frac = float(next(x for x in out.splitlines() if "of the adapted model" in x).split("=")[1].split("%")[0])
    assert 1.8 <= frac <= 2.0


def test_params_vpt_budget(capsys):
    out = _params(capsys, "vit_tiny_patch16_224", "--strategy", "[{method: vpt, mode: deep, budget: 0.001}]")
    assert "tokens x 12 layers" in out and "vpt deep budget 0.1%" in out


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("[{method: lora, budget: 1}]", "strategies.0.budget: expected a fraction of the model's parameters in (0, 1)"),
        ("[{method: lora, budget: 0.01, rank: 8}]", "budget and rank are mutually exclusive"),
        ("[{method: vpt, budget: 0.001, tokens: 4}]", "budget and tokens are mutually exclusive"),
        ("[{method: lora, budget: 0.0001}]", "raise the budget to at least 0.006"),
        ("[{method: lora, budget: 0.01, allocation: importance}]", "allocation: importance needs a few training"),
    ],
)
def test_bad_budgets_are_one_line_exit_2(capsys, strategy, message):
    capsys.readouterr()
    assert main(["params", "vit_tiny_patch16_224", "--strategy", strategy]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visionpeft: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err
