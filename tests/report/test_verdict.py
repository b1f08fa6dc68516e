"""Which interval decides a compare row: pairing saved per-example results by seed and image, or saying why not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from visionpeft.examples import read_examples, write_examples
from visionpeft.report.verdict import bootstrap_row, paired_scores
from visionpeft.tasks.base import RunResult, StrategyRuns

FILES = [f"/data/test/{c}/{i}.png" for c in ("a", "b") for i in range(5)]
LABELS = [0] * 5 + [1] * 5


def _group(root: Path, name: str, predictions: list[list[int]], seeds=(0, 1), files=FILES) -> StrategyRuns:
    runs = []
    for seed, pred in zip(seeds, predictions):
        run_dir = root / name / f"seed-{seed}"
        run_dir.mkdir(parents=True)
        if pred is not None:
            write_examples(run_dir, "test", files, LABELS, pred)
        runs.append(RunResult(strategy=name, trainable_params=1, total_params=1, trainable_pct=100.0, metrics={},
                              peak_mem_mb=0, train_img_per_s=0, train_seconds=0, adapter_bytes=0, step_time_s=0,
                              run_dir=run_dir, extra={"seed": seed}))
    return StrategyRuns(name=name, runs=runs)


def test_pairs_seed_by_seed_and_image_by_image(tmp_path):
    full = _group(tmp_path, "full", [LABELS, [1 - y for y in LABELS[:5]] + LABELS[5:]])
    lora = _group(tmp_path, "lora", [[0] * 10, LABELS])
    s, f = paired_scores(lora, full)
    assert s.shape == f.shape == (2, 10)
    assert s[0].tolist() == [1.0] * 5 + [0.0] * 5 and f[1].tolist() == [0.0] * 5 + [1.0] * 5
    boot, basis = bootstrap_row(lora, full)
    assert basis == "bootstrap over 2 seeds x 10 test images"
    assert boot.delta == pytest.approx(np.mean(s - f)) and boot.low <= boot.delta <= boot.high


@pytest.mark.parametrize("case, reason", [
    ("missing", "no per-example test results saved"),
    ("seeds", "seeds [0, 2] differ from full fine-tuning's [0, 1]"),
    ("files", "the runs' test images differ"),
])
def test_unpairable_runs_fall_back_to_the_t_interval_saying_why(tmp_path, case, reason):
    full = _group(tmp_path, "full", [LABELS, LABELS])
    if case == "missing":
        other = _group(tmp_path, "lora", [LABELS, None])
    elif case == "seeds":
        other = _group(tmp_path, "lora", [LABELS, LABELS], seeds=(0, 2))
    else:
        other = _group(tmp_path, "lora", [LABELS, LABELS], files=[f.replace("/data/", "/other/") for f in FILES])
    boot, basis = bootstrap_row(other, full)
    assert boot is None and basis.startswith("seed t-interval (") and reason in basis


def test_the_same_images_in_another_order_are_paired_by_file(tmp_path):
    preds = [LABELS, [0] * 10]
    full = _group(tmp_path, "full", preds)
    lora = _group(tmp_path, "lora", [None, None])
    for run, pred in zip(lora.runs, preds):  # the same predictions, the images listed in reverse order
        write_examples(run.run_dir, "test", FILES[::-1], LABELS[::-1], pred[::-1])
    s, f = paired_scores(lora, full)
    assert s.tolist() == f.tolist() == [[1.0] * 10, [1.0] * 5 + [0.0] * 5]


def test_one_seed_gets_no_bootstrap_interval(tmp_path):
    full, lora = _group(tmp_path, "full", [LABELS], seeds=(0,)), _group(tmp_path, "lora", [[0] * 10], seeds=(0,))
    assert bootstrap_row(lora, full) == (None, "seed t-interval (one seed: no interval, no verdict)")


def test_examples_file_round_trip_and_refusals(tmp_path):
    path = write_examples(tmp_path, "test", FILES, LABELS, LABELS)
    assert path.name == "test_examples.json"
    ex = read_examples(tmp_path, "test")
    assert ex.files == tuple(FILES) and ex.scores.tolist() == [1.0] * 10
    assert read_examples(tmp_path, "val") is None
    path.write_text("{not json")
    assert read_examples(tmp_path, "test") is None
    with pytest.raises(ValueError, match="each image needs one of each"):
        write_examples(tmp_path, "test", FILES, LABELS[:3], LABELS)


def _detection_group(root: Path, name: str, harder: float, sim, test_set, order=None) -> StrategyRuns:
    """Two seed runs with simulated per-image detection records (``test_images.npz``); ``order``: the second
    run's images listed in another order (Ultralytics' rect batches sort images by shape)."""
    from visionpeft.image_records import write_records

    group = _group(root, name, [None, None])
    rng = np.random.default_rng(len(name))
    for k, run in enumerate(group.runs):
        rec = sim.detection_run(rng, test_set, 0.15, harder)
        write_records(run.run_dir, "test", rec.reorder(order) if order is not None and k == 1 else rec)
    return group


def test_detection_runs_pair_by_image_name_and_recompute_map(tmp_path):
    from visionpeft.image_records import read_records
    from visionpeft.report.bootstrap import statistic_bootstrap
    from visionpeft.report.image_statistics import ap_statistic

    from ..fixtures import load_benchmark

    sim = load_benchmark("verdict_calibration")
    test_set = sim.detection_test_set(np.random.default_rng(2))
    shuffled = np.random.default_rng(0).permutation(72)
    full = _detection_group(tmp_path, "full", 0.0, sim, test_set)
    lora = _detection_group(tmp_path, "lora", 3.0, sim, test_set, order=shuffled)
    boot, basis = bootstrap_row(lora, full)
    assert basis == "bootstrap over 2 seeds x 72 test images, map50_95 recomputed"
    # the same numbers as the bootstrap on the runs' records put in one image order (by name) by hand
    recs = [read_records(r.run_dir, "test") for r in (*lora.runs, *full.runs)]
    recs = [r.reorder(np.argsort(r.files)) for r in recs]
    assert all(r.files == recs[0].files for r in recs)
    ref = statistic_bootstrap([ap_statistic(r) for r in recs[:2]], [ap_statistic(r) for r in recs[2:]], 72)
    assert (boot.delta, boot.low, boot.high) == pytest.approx((ref.delta, ref.low, ref.high), abs=1e-12)
    assert boot.verdict == "worse"
    assert paired_scores(lora, full) == "map50_95 is not a mean over images"


def test_runs_with_other_kinds_of_results_are_not_paired(tmp_path):
    from ..fixtures import load_benchmark

    sim = load_benchmark("verdict_calibration")
    full = _group(tmp_path, "full", [LABELS, LABELS])
    lora = _detection_group(tmp_path, "lora", 0.0, sim, sim.detection_test_set(np.random.default_rng(2)))
    assert bootstrap_row(lora, full) == (None, "seed t-interval (the runs saved different kinds of per-example "
                                               "results)")


def test_records_of_another_metric_than_the_headline_are_not_used(tmp_path):
    full, lora = _group(tmp_path, "full", [LABELS, LABELS]), _group(tmp_path, "lora", [[0] * 10, LABELS])
    assert bootstrap_row(lora, full, "top1")[0] is not None
    boot, basis = bootstrap_row(lora, full, "top5")
    assert boot is None and "the saved per-example results are of top1, not of the headline top5" in basis
