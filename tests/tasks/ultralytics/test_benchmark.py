"""The detection benchmark script's table, verdict and docs update (no training: a report is faked)."""

from __future__ import annotations

import pytest

from ...fixtures import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("transfer_detection")


def _row(name: str, params: int, pct: float, test: float, delta: float, lo: float, hi: float, verdict: str) -> dict:
    return {"strategy": name, "trainable_params": params, "trainable_pct": pct, "seeds": 3, "lr": None,
            "map50_95_test": test, "map50_95_test_ci_low": test - 0.02, "map50_95_test_ci_high": test + 0.02,
            "map50_95_val": test + 0.01, "delta_map50_95_test_vs_full": delta, "delta_map50_95_test_ci_low": lo,
            "delta_map50_95_test_ci_high": hi, "delta_map50_95_test_boot_low": lo / 2,
            "delta_map50_95_test_boot_high": hi / 2, "verdict": verdict, "time_to_full_val_s": "never",
            "verdict_basis": None if verdict == "baseline" else "bootstrap over 3 seeds x 72 test images, map50_95 "
            "recomputed",
            "time_to_full_reached": "0/3", "train_seconds": 10.0, "step_time_ratio_vs_full": 1.0,
            "peak_mem_ratio_vs_full": 1.0}


REPORT = {
    "recipe": {"seed": 0, "ultralytics": {"epochs": 2, "imgsz": 160, "batch": 8, "device": "cpu"}},
    "environment": {"versions": {"torch": "2.x", "ultralytics": "8.x"}, "cpu_count": 2, "torch_threads": 2},
    "protocol": {"headline": "map50_95_test", "test_split": True, "seeds": [0, 1, 2]},
    "runs": [
        _row("full", 2_000_000, 100.0, 0.2, 0.0, 0.0, 0.0, "baseline"),
        _row("lora", 1_000_000, 50.0, 0.3, 0.1, 0.05, 0.15, "better"),
        _row("head", 250_000, 12.5, 0.1, -0.1, -0.15, -0.05, "worse"),
        _row("ssf", 100_000, 5.0, 0.21, 0.01, -0.02, 0.04, "tied"),
    ],
}


def test_rows_and_verdict(bench):
    rows = bench.summary_rows(REPORT)
    assert [r["strategy"] for r in rows] == ["full", "lora", "head", "ssf"]
    assert rows[1]["per_M_trainable"] == pytest.approx(0.3)
    assert rows[2]["per_M_trainable"] == pytest.approx(0.4)
    assert rows[1]["map50_95_test"] == "0.3000 +- 0.0200" and rows[1]["map50_95_val"] == "0.3100"
    # the delta carries the bootstrap's interval (the verdict's), the seed-only t-interval stands beside it
    assert rows[1]["delta"] == "+0.1000 [+0.0250, +0.0750]" and rows[0]["delta"] == "-"
    assert rows[1]["t-interval"] == "[+0.0500, +0.1500]"
    text = bench.verdict(REPORT)
    assert text.startswith("On `map50_95_test` (bootstrap over 3 seeds x 72 test images, map50_95 recomputed)")
    assert "better: lora; worse: head; tied (interval contains 0): ssf." in text


def test_docs_section_is_replaced_not_duplicated(bench, tmp_path):
    args = bench.parse_args(["--smoke"])
    section = bench.render(bench.summary_rows(REPORT), REPORT, args)
    assert section.startswith(bench.START) and section.endswith(bench.END)
    assert "torch 2.x, ultralytics 8.x, CPU, 2 cores" in section and "seeds 0, 1, 2" in section
    assert "BCCD's own `test` split" in section
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Classification\nkeep me\n")
    bench.update_docs(doc, section)
    bench.update_docs(doc, section.replace("lora", "LORA"))
    text = doc.read_text()
    assert text.count(bench.START) == 1 and "keep me" in text and "better: LORA" in text


def test_smoke_overrides(bench, tmp_path):
    args = bench.parse_args(["--smoke", "seed=3"])
    over = bench.overrides_for(args, tmp_path / "data.yaml", tmp_path / "runs")
    assert "ultralytics.epochs=1" in over and "ultralytics.fraction=0.25" in over and over[-1] == "seed=3"
    assert "seeds=2" in over and any(o.startswith("compare=") for o in over)


def test_full_overrides_add_the_new_methods_and_seeds(bench, tmp_path):
    import yaml

    args = bench.parse_args(["--seeds", "4"])
    over = bench.overrides_for(args, tmp_path / "data.yaml", tmp_path / "runs")
    assert "seeds=4" in over
    compare = yaml.safe_load(next(o for o in over if o.startswith("compare="))[len("compare="):])
    assert {"freeze10", "lora", "dora", "loha", "lokr", "ssf"} <= set(compare)
    with pytest.raises(SystemExit):
        bench.parse_args(["--seeds", "0"])
