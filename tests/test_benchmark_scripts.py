"""Pieces of benchmarks/strategies.py and benchmarks/precision.py that decide what their tables say (no long runs:
tiny models and hand-made run records)."""

from __future__ import annotations

import argparse

import pytest
import torch

from .fixtures import load_benchmark


def test_precision_summary_from_hand_made_runs():
    precision = load_benchmark("precision")
    rows = []
    for seed, (fp32, bf16, t32, t16) in enumerate([(0.80, 0.81, 10.0, 30.0), (0.70, 0.70, 11.0, 22.0),
                                                   (0.75, 0.73, 12.0, 48.0)]):
        rows += [{"strategy": "lora_r8", "amp": "off", "seed": seed, "top1_test": fp32, "train_seconds": t32},
                 {"strategy": "lora_r8", "amp": "bf16", "seed": seed, "top1_test": bf16, "train_seconds": t16}]
    (row,) = precision.summarise(rows)
    assert row["fp32_top1_test"] == "0.7500 +- 0.0500" and row["bf16_top1_test"] == "0.7467 +- 0.0569"
    # Paired differences +0.01, 0, -0.02: mean -0.00333, sd 0.01528, t(0.975, 2) = 4.3027 -> half-width 0.03795.
    assert row["delta_bf16_minus_fp32"] == "-0.0033 [-0.0413, +0.0346]"
    assert row["within_fp32_seed_spread"] is True  # |0.7467 - 0.75| <= 0.05
    assert row["time_ratio_bf16_over_fp32"] == 3.0  # median of 3.0, 2.0, 4.0


def test_strategies_yolo_rows_count_what_the_detection_runs_train(shared):
    pytest.importorskip("ultralytics")
    strategies = load_benchmark("strategies")
    args = argparse.Namespace(yolo=str(shared / "weights" / "yolov5nu-cocobackbone.pt"), yolo_size=64, batch=2,
                              rounds=1, latency_reps=1, amp=None, compile=False, only="lora r8+head,bitfit+head")
    threads = torch.get_num_threads()
    try:
        rows = {r["strategy"]: r for r in strategies.bench_yolo(args, torch.device("cpu"))}
    finally:
        torch.set_num_threads(threads)
    assert list(rows) == ["full", "bitfit+head", "lora r8+head"]
    # The same counts as the BCCD detection runs (3 classes on the COCO YOLOv5n layers, docs/benchmarks.md).
    assert rows["full"]["trainable_params"] == 2_636_089
    assert rows["lora r8+head"]["trainable_params"] == 1_040_601
    assert rows["bitfit+head"]["trainable_params"] == 883_689
    assert rows["full"]["step_ratio_vs_full"] == 1.0 and all(r["step_s"] > 0 for r in rows.values())
    assert rows["lora r8+head"]["latency_form"] == "merged"


def test_precision_reuse_with_other_settings_is_one_line_exit_2(tmp_path, capsys):
    precision = load_benchmark("precision")
    old = tmp_path / "old.json"
    old.write_text('{"args": {"epochs": 3, "max_per_class": 60, "size": 80, "threads": 1}, "runs": []}')
    args = precision.parse_args(["--reuse", str(old), "--epochs", "5", "--threads", "1"])
    with pytest.raises(SystemExit) as exc:
        precision.reusable_runs(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "made with other settings (epochs)" in err
    same = precision.parse_args(["--reuse", str(old), "--threads", "1"])
    assert precision.reusable_runs(same) == {}  # same settings: its (here no) runs are reused


def test_verdict_calibration_runs_and_prints_every_setting(capsys):
    calibration = load_benchmark("verdict_calibration")
    calibration.main(["--reps", "2", "--resamples", "50"])
    out = capsys.readouterr().out
    assert out.count("A/A sigma=") == 8 and out.count("probe sigma_probe=") == 4 and "cost, 3 seeds" in out
    # The simulated runs: a fixed test set, seed-wide shifts and flips (an A/A pair differs, yet both are ~0.77).
    import numpy as np

    logit = np.random.default_rng(1).normal(2.5, 3.0, 500)
    a, b = calibration.runs(np.random.default_rng(0), logit, 2, 0.15), calibration.runs(np.random.default_rng(9),
                                                                                         logit, 2, 0.15)
    assert a.shape == (2, 500) and 0.72 < a.mean() < 0.82 and 0.72 < b.mean() < 0.82 and (a != b).any()


def test_lr_study_table_puts_each_rate_under_its_factor_of_the_default():
    study = load_benchmark("lr_study")
    results = {"vit/flowers": {"sweeps": {
        "full": {"rates": {"3e-05": 0.70, "0.0001": 0.80, "0.0003": 0.78, "0.001": 0.40}, "chosen": "0.0001"},
        "lokr_r8": {"rates": {"0.003": 0.6, "0.01": 0.7, "0.03": 0.75, "0.1": 0.2}, "chosen": "0.03"}},
        "defaults": {"full": 1e-4, "lokr_r8": 1e-2}, "seconds": 1.0},
        "yolo/bccd": {"sweeps": {"full": {"rates": {"0.0003": 0.1, "0.001": 0.2}, "chosen": "0.001"}},
                      "defaults": {}, "seconds": 1.0}}
    rows = study.table(results)[2:]
    assert rows[0] == "| vit/flowers | full | 0.0001 | 0.700 | **0.800** | 0.780 | 0.400 | 0.0001 |"
    assert rows[1] == "| vit/flowers | lokr_r8 | 0.01 | 0.600 | 0.700 | **0.750** | 0.200 | 0.03 |"
    assert rows[2].startswith("| yolo/bccd | full | - | 0.0003: 0.100, 0.001: 0.200 |")
    assert rows[2].endswith("| 0.001 |")
