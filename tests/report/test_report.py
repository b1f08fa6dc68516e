"""Compare report: rows, deltas against full fine-tuning, files, detection metrics unchanged."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from visionpeft.report import report_rows, write_report
from visionpeft.tasks.base import RunResult


def result(name: str, trainable: int, metrics: dict[str, float], step: float, mem: float) -> RunResult:
    return RunResult(strategy=name, trainable_params=trainable, total_params=1000,
                     trainable_pct=100 * trainable / 1000, metrics=metrics, peak_mem_mb=mem,
                     train_img_per_s=100.0, train_seconds=12.5, adapter_bytes=4 * trainable, step_time_s=step,
                     run_dir=Path(f"/tmp/{name}"))


def test_rows_deltas_and_ratios():
    rows = report_rows([result("full", 1000, {"top1": 0.80, "top5": 0.95}, 0.2, 400.0),
                        result("lora", 50, {"top1": 0.83, "top5": 0.97}, 0.1, 100.0)])
    assert rows[0]["delta_top1_val_vs_full"] == 0
    assert rows[1]["delta_top1_val_vs_full"] == pytest.approx(0.03)
    assert rows[1]["delta_top5_val_vs_full"] == pytest.approx(0.02)
    assert rows[1]["top1_val"] == pytest.approx(0.83) and rows[1]["verdict"] == "n/a (1 seed)"
    assert rows[1]["step_time_ratio_vs_full"] == pytest.approx(0.5)
    assert rows[1]["peak_mem_ratio_vs_full"] == pytest.approx(0.25)
    assert rows[1]["trainable_pct"] == pytest.approx(5.0)


def test_write_report_files(tmp_path, capsys):
    recipe = {"name": "demo", "model": "m", "data": "d"}
    results = [result("full", 1000, {"map50": 0.5, "map50_95": 0.3}, 0.2, 10.0),
               result("freeze_10", 300, {"map50": 0.45, "map50_95": 0.28}, 0.12, 8.0)]
    paths = write_report(tmp_path, results, recipe, "map50_95", extra={"weights": "w.pt"})
    doc = json.loads(paths["json"].read_text())
    assert doc["primary_metric"] == "map50_95"
    assert [r["strategy"] for r in doc["runs"]] == ["full", "freeze_10"]
    assert doc["runs"][1]["delta_map50_95_val_vs_full"] == pytest.approx(-0.02)
    assert doc["recipe"]["name"] == "demo" and "torch" in doc["environment"]["versions"]
    with paths["csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows[1]["strategy"] == "freeze_10" and float(rows[1]["map50_val"]) == pytest.approx(0.45)
    md = paths["md"].read_text()
    assert f"| freeze_10 | 30 | {4 * 300 / 2**20:.3f} | 1 |" in md  # 300 float32 parameters: the adapter_mb column
    assert "map50_95_val" in md and "weights: w.pt" in md
    assert "selection-biased" in md  # no test split: the report says its numbers are optimistic
    assert paths["png"].stat().st_size > 5000 and paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert "| full |" in capsys.readouterr().out


def seeded(name: str, seed: int, val: float, test: float, curve: list) -> RunResult:
    r = result(name, 100, {"top1": val}, 0.1, 10.0)
    r.extra.update(seed=seed, test_metrics={"top1": test}, val_curve=curve)
    return r


def test_rows_over_seeds_intervals_verdict_and_time_to_full():
    from visionpeft.tasks.base import StrategyRuns

    full = StrategyRuns("full", [seeded("full", 0, 0.80, 0.70, [[10, 0.6], [20, 0.8]]),
                                 seeded("full", 1, 0.82, 0.74, [[10, 0.7], [20, 0.82]])])
    # Test deltas 0.05 and 0.07 (mean 0.06, s = 0.0141421): interval 0.06 +- 12.706 * 0.01 -> tied with 2 seeds.
    lora = StrategyRuns("lora", [seeded("lora", 0, 0.81, 0.75, [[5, 0.81], [9, 0.83]]),
                                 seeded("lora", 1, 0.80, 0.81, [[5, 0.79], [9, 0.80]])])
    probe = StrategyRuns("probe", [seeded("probe", 0, 0.5, 0.49, [[1, 0.5]]),
                                   seeded("probe", 1, 0.5, 0.53, [[1, 0.5]])])
    rows = {r["strategy"]: r for r in report_rows([full, lora, probe], "top1")}
    lo = rows["lora"]
    assert lo["top1_test"] == pytest.approx(0.78) and lo["top1_val"] == pytest.approx(0.805)
    assert lo["delta_top1_test_vs_full"] == pytest.approx(0.06)
    assert lo["delta_top1_test_ci_low"] == pytest.approx(0.06 - 12.706 * 0.01, abs=1e-6)
    assert lo["verdict"] == "tied" and rows["probe"]["verdict"] == "worse"  # deltas -0.21, -0.21: s = 0
    assert rows["full"]["verdict"] == "baseline" and rows["full"]["time_to_full_val_s"] == 20.0
    # lora reaches full's final validation value (0.80 / 0.82) at 5 s in seed 0 only; the probe never does.
    assert (lo["time_to_full_val_s"], lo["time_to_full_reached"]) == (5.0, "1/2")
    assert (rows["probe"]["time_to_full_val_s"], rows["probe"]["time_to_full_reached"]) == ("never", "0/2")
