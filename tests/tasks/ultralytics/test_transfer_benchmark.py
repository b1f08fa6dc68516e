"""The segmentation/pose benchmark script's table and conclusions, rebuilt from a compare directory (no training:
the runs' metrics.json files are written by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ...fixtures import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("transfer_tasks")


RUNS = {  # folder: (strategy, mask mAP50-95, box mAP50-95, trainable params)
    "00-full": ("full", 0.30, 0.40, 2_761_411),
    "01-freeze10": ("freeze10", 0.26, 0.37, 1_700_000),
    "02-head": ("head", 0.12, 0.20, 1_000_000),
    "03-lora": ("lora", 0.28, 0.38, 1_165_923),
    "99-random-init-full": ("random_init_full", 0.15, 0.22, 2_761_411),
}


def _compare_dir(root: Path) -> Path:
    for folder, (name, mask, box, params) in RUNS.items():
        (root / folder).mkdir(parents=True)
        (root / folder / "metrics.json").write_text(json.dumps({
            "strategy": name, "trainable_params": params, "trainable_pct": 100 * params / 2_761_427,
            "metrics": {"mask_map50_95": mask, "mask_map50": mask + 0.2, "map50_95": box}}))
    return root


def test_report_only_rebuilds_the_section_with_its_conclusions(bench, tmp_path, capsys):
    compare = _compare_dir(tmp_path / "cmp")
    docs = tmp_path / "bench.md"
    docs.write_text("# kept\n")
    assert bench.main(["--task", "segment", "--epochs", "20", "--imgsz", "160", "--report-only", str(compare),
                       "--update-docs", str(docs)]) == 0
    text = docs.read_text()
    assert text.startswith("# kept\n") and text.count("<!-- transfer-segment:start -->") == 1
    assert "--task segment --epochs 20 --imgsz 160`" in text and "mask_map50_95 on the val split" in text
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert lines["lora"] == "| lora | 0.28 | -0.02 | 0.48 | 0.38 | 42.22 | 1,165,923 |"
    assert lines["random_init_full"] == "| random_init_full | 0.15 | -0.15 | 0.35 | 0.22 | 100 | 2,761,411 |"
    # freeze10 (0.26), lora (0.28) beat the random-init model (0.15); head (0.12) does not.
    assert ("- Above the same model trained in full from random init (0.1500): freeze10, lora; not above: head."
            in text)
    assert "- Best PEFT run: lora (0.2800, -0.0200 vs full fine-tuning 0.3000)." in text
    assert (compare / "benchmark.md").read_text().strip() == text[len("# kept\n"):].strip()


def test_rows_give_deltas_to_full_fine_tuning(bench):
    results = [{"strategy": s, "metrics": {"pose_map50_95": v}, "trainable_pct": 1.0, "trainable_params": 1}
               for s, v in (("full", 0.5), ("lora", 0.45), ("random_init_full", 0.1))]
    rows = bench.rows_for(results, "pose_map50_95")
    assert [r["delta_pose_map50_95_vs_full"] for r in rows] == pytest.approx([0.0, -0.05, -0.4])


def test_report_only_without_runs_is_one_line_exit_2(bench, tmp_path, capsys):
    assert bench.main(["--task", "pose", "--report-only", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no finished runs" in err
