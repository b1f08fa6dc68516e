"""The detection benchmark script's table, verdict and docs update (no training: a report is faked)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("transfer_detection", REPO / "benchmarks" / "transfer_detection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REPORT = {
    "recipe": {"seed": 0, "ultralytics": {"epochs": 2, "imgsz": 160, "batch": 8, "device": "cpu"}},
    "environment": {"versions": {"torch": "2.x", "ultralytics": "8.x"}, "cpu_count": 2, "torch_threads": 2},
    "runs": [
        {"strategy": "full", "trainable_params": 2_000_000, "trainable_pct": 100.0, "map50": 0.5, "map50_95": 0.2,
         "delta_map50_95_vs_full": 0.0, "step_time_ratio_vs_full": 1.0, "peak_mem_ratio_vs_full": 1.0},
        {"strategy": "lora", "trainable_params": 1_000_000, "trainable_pct": 50.0, "map50": 0.6, "map50_95": 0.3,
         "delta_map50_95_vs_full": 0.1, "step_time_ratio_vs_full": 0.9, "peak_mem_ratio_vs_full": 0.8},
        {"strategy": "head", "trainable_params": 250_000, "trainable_pct": 12.5, "map50": 0.3, "map50_95": 0.1,
         "delta_map50_95_vs_full": -0.1, "step_time_ratio_vs_full": 0.5, "peak_mem_ratio_vs_full": 0.3},
    ],
}


def test_rows_and_verdict(bench):
    rows = bench.summary_rows(REPORT)
    assert [r["strategy"] for r in rows] == ["full", "lora", "head"]
    assert rows[1]["map50_95_per_M_trainable"] == pytest.approx(0.3)
    assert rows[2]["map50_95_per_M_trainable"] == pytest.approx(0.4)
    text = bench.verdict(rows)
    assert "PEFT strategies: **lora** (0.3000, +0.1000 vs full)" in text
    assert "per trainable parameter: **head**" in text


def test_docs_section_is_replaced_not_duplicated(bench, tmp_path):
    args = bench.parse_args(["--quick"])
    section = bench.render(bench.summary_rows(REPORT), REPORT, args)
    assert section.startswith(bench.START) and section.endswith(bench.END)
    assert "torch 2.x, ultralytics 8.x, CPU, 2 cores" in section
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Classification\nkeep me\n")
    bench.update_docs(doc, section)
    bench.update_docs(doc, section.replace("lora", "LORA"))
    text = doc.read_text()
    assert text.count(bench.START) == 1 and "keep me" in text and "**LORA**" in text


def test_quick_overrides(bench, tmp_path):
    args = bench.parse_args(["--quick", "--fraction", "0.5", "seed=3"])
    over = bench.overrides_for(args, tmp_path / "data.yaml", tmp_path / "runs")
    assert "ultralytics.epochs=2" in over and "ultralytics.fraction=0.5" in over and over[-1] == "seed=3"
    assert any(o.startswith("compare=") for o in over)
