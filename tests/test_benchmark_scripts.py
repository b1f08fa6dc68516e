"""Pieces of benchmarks/strategies.py, precision.py and transfer_classification.py that decide what their tables
say (no long runs: tiny models, hand-made run records and report rows)."""

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


def _row(strategy: str, verdict: str, basis: str | None = "bootstrap over 3 seeds x 400 test images",
         **extra) -> dict:
    return {"strategy": strategy, "seeds": 3, "verdict": verdict, "verdict_basis": basis, "trainable_pct": 1.5,
            "lr": 1e-3, "lr_source": "default", "top1_test": 0.8, "top1_test_ci_high": 0.83, "top1_val": 0.81,
            "delta_top1_test_vs_full": 0.02, "delta_top1_test_ci_low": -0.01, "delta_top1_test_ci_high": 0.05,
            "delta_top1_test_boot_low": 0.005, "delta_top1_test_boot_high": 0.035, "adapter_bytes": 2**20,
            "train_seconds": 12.5, **extra}


def _report(*rows: dict) -> dict:
    full = _row("full", "baseline", None, lr=1e-4, delta_top1_test_vs_full=0.0)
    return {"protocol": {"headline": "top1_test", "test_split": True, "seeds": [0, 1, 2]}, "lr_sweeps": [],
            "runs": [full, *rows]}


def test_classification_conclusions_list_every_row_under_its_verdict():
    bench = load_benchmark("transfer_classification", "bench_conclusions")
    report = _report(_row("lora_r8", "better"), _row("ssf", "tied"), _row("bitfit", "worse"),
                     _row("vpt_deep", "tied", "seed t-interval (the runs' test images differ)"))
    lines = bench.conclusions(report)
    assert lines[0] == ("- better than full fine-tuning on `top1_test` (95% interval of `delta` above 0): lora_r8")
    assert lines[1] == "- worse (interval below 0): bitfit"
    assert lines[2].endswith("3 seeds on this test split): ssf, vpt_deep")
    assert lines[3].endswith("(`verdict_basis` in report.json): vpt_deep")  # said when the bootstrap did not decide
    assert len(lines) == 4
    # Nothing better: 'none', no hard-coded claim; one seed: no verdict at all.
    assert bench.conclusions(_report(_row("ssf", "tied")))[0].endswith("above 0): none")
    one_seed = bench.conclusions(_report(_row("ssf", "n/a (1 seed)", "seed t-interval (one seed)")))
    assert len(one_seed) == 1 and one_seed[0].startswith("- one seed: no interval")


def test_classification_table_shows_rate_source_bootstrap_delta_and_t_interval_apart():
    bench = load_benchmark("transfer_classification", "bench_table")
    lines = bench.results_table(_report(_row("lora_r8", "better"))).splitlines()
    assert lines[0] == ("| strategy | lr | top1_test | top1_val | delta | verdict | t-interval | trainable_pct | "
                        "adapter_mb | train_seconds |")
    assert lines[2].startswith("| full | 0.0001 (default) | 0.8000 +- 0.0300 | 0.8100 | - | baseline | - |")
    # delta carries the bootstrap's interval, the seed-only t-interval has its own column.
    assert lines[3] == ("| lora_r8 | 0.001 (default) | 0.8000 +- 0.0300 | 0.8100 | +0.0200 [+0.0050, +0.0350] | "
                        "better | [-0.0100, +0.0500] | 1.5 | 1.000 | 12.5 |")


def test_classification_rows_per_model_and_only(capsys):
    bench = load_benchmark("transfer_classification", "bench_rows")
    args = bench.parse_args([])
    assert args.models == ["cnn", "vit"] and args.datasets == ["flowers", "hymenoptera"]
    assert (args.cnn_size, args.vit_size, args.seeds) == (128, 112, 3)
    common = ["linear_probe", "bitfit", "lora_r8", "dora_r8", "lokr_r8", "ssf"]
    assert list(bench.selected_rows(bench.MODELS["cnn"], None)) == common
    assert sorted(bench.selected_rows(bench.MODELS["vit"], None)) == sorted([*common, "vpt_deep", "adaptformer_16"])
    # --only: a model runs the requested rows it has; the ViT's rows are transfer_vit.py's.
    assert list(bench.selected_rows(bench.MODELS["cnn"], "vpt_deep,ssf")) == ["ssf"]
    vit = bench.selected_rows(bench.MODELS["vit"], "vpt_deep,ssf")
    assert vit == {k: load_benchmark("transfer_vit", "bench_vit").STRATEGIES[k] for k in ("vpt_deep", "ssf")}
    # No rate in the recipe: every method, the head's included, at its default.
    doc = bench.base_doc(args, "vit-flowers", "data.yaml", bench.MODELS["vit"], 112, hflip=0.5)
    assert "lr" not in doc["optim"] and "head_lr" not in doc["optim"] and "lr_grid" not in doc
    assert doc["model"] == "vit_tiny_patch16_224" and doc["weights"].endswith("vit_tiny_patch16_224.in1k.safetensors")
    assert all(e.get("lr") is None for entries in doc["compare"].values() for e in entries)
    sweep = bench.base_doc(bench.parse_args(["--lr-sweep"]), "x", "d", bench.MODELS["cnn"], 128, hflip=0.5)
    assert sweep["lr_grid"]["full"] == [3.3e-05, 1e-4, 3e-4] and "linear_probe" not in sweep["lr_grid"]
    for bad, message in ((["--models", "cnn", "--only", "vpt_deep"], "--only: unknown rows ['vpt_deep']"),
                         (["--datasets", "flowers,ants"], "--datasets: unknown ['ants']"),
                         (["--vit-size", "120"], "--vit-size: the ViT needs a multiple of 16 px, got 120")):
        with pytest.raises(SystemExit) as exc:
            bench.parse_args(bad)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert bench.parse_args(["--models", "cnn", "--cnn-size", "100"]).cnn_size == 100  # any size for the CNN
    smoke = bench.parse_args(["--smoke", "--vit-size", "112"])
    assert (smoke.epochs, smoke.seeds, smoke.cnn_size, smoke.vit_size) == (1, 2, 48, 112)
