"""The paired two-level bootstrap: against an explicit loop, analytic cases, and calibration on simulated runs.

The simulation (:func:`_runs`) is a fixed per-image difficulty model with seed noise: 500 test images with logit
difficulties ~ N(2.5, 3) (accuracy about 0.77), each run adds a seed-wide logit shift ~ N(0, sigma) and draws
every image's correctness from its probability (per-image flips). sigma = 0.15 gives a run-to-run accuracy
spread of about 0.018 and 21% of images flipping between two seeds, the size the issue measured (full fine-tuning
0.784 -> 0.812 between two seeds on 500 held-out flower images).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from visionpeft.report.bootstrap import (
    draw_indices,
    inflate_seed_rows,
    paired_bootstrap,
    replicate_seed_scale,
    seed_scale,
    statistic_bootstrap,
)
from visionpeft.report.stats import paired_interval, verdict


def _runs(rng: np.random.Generator, logit: np.ndarray, seeds: int, sigma: float) -> np.ndarray:
    shift = rng.normal(0.0, sigma, (seeds, 1))
    p = 1.0 / (1.0 + np.exp(-(logit[None] + shift)))
    return (rng.random(p.shape) < p).astype(float)


def _difficulty() -> np.ndarray:
    return np.random.default_rng(1).normal(2.5, 3.0, 500)


def test_vectorised_equals_an_explicit_loop_with_the_same_draws():
    rng = np.random.default_rng(3)
    s, f = (rng.random((3, 7)) < 0.7).astype(float), (rng.random((3, 7)) < 0.6).astype(float)
    diff = inflate_seed_rows(s - f)
    seeds, examples = draw_indices(np.random.default_rng(11), 400, 3, 7)
    reps = [sum(diff[seeds[b, j], examples[b, m]] for j in range(3) for m in range(7)) / 21 for b in range(400)]
    half = 1.959964 * np.std(reps, ddof=1)  # the normal interval from the bootstrap's standard error
    low, high = (s - f).mean() - half, (s - f).mean() + half
    res = paired_bootstrap(s, f, resamples=400, rng_seed=11)
    assert (res.low, res.high) == (pytest.approx(low, abs=1e-6), pytest.approx(high, abs=1e-6))
    assert res.delta == pytest.approx((s - f).mean(), abs=1e-12) and (res.seeds, res.examples) == (3, 7)


def test_seed_scale_without_flips_is_the_t_penalty():
    # Rows constant (every image moves with its seed): no flip noise, the whole spread is seed-wide, so the
    # bootstrap's seed-level variance must become q * s^2 / K with q = (t_{K-1} / z)^2, i.e. a scale of
    # sqrt(q * s^2 / (s^2 (K-1)/K)) = sqrt(q K / (K - 1)). (z from a 6-decimal table: rel 1e-7.)
    two = np.array([[0.1] * 4, [0.3] * 4])
    assert seed_scale(two) == pytest.approx(math.sqrt((12.706 / 1.959964) ** 2 * 2), rel=1e-7)
    three = np.array([[0.1] * 4, [0.2] * 4, [0.4] * 4])
    assert seed_scale(three) == pytest.approx(math.sqrt((4.303 / 1.959964) ** 2 * 1.5), rel=1e-7)
    assert seed_scale(np.zeros((1, 4))) == 1.0


def test_seed_scale_with_flips_only_is_the_davison_hinkley_factor_or_more():
    # Seeds that agree exactly on the mean but flip images: no excess, v_flip > 0 while the row spread is 0.
    flips = np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    assert seed_scale(flips) == 1.0  # rows have equal means: nothing to inflate
    rows = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]])
    assert seed_scale(rows) >= math.sqrt(2.0)


def test_a_constant_difference_is_decided_and_its_interval_is_a_point():
    s, f = np.ones((2, 50)), np.zeros((2, 50))
    res = paired_bootstrap(s, f, resamples=200)
    assert (res.delta, res.low, res.high, res.verdict) == (1.0, 1.0, 1.0, "better")
    assert paired_bootstrap(f, s, resamples=200).verdict == "worse"
    assert paired_bootstrap(s[:1], f[:1], resamples=200).verdict == "n/a (1 seed)"


@pytest.mark.parametrize("seeds", [2, 3])
def test_a_strategy_against_itself_reads_tied_at_least_95_percent(seeds):
    rng, logit = np.random.default_rng(seeds), _difficulty()
    tied = sum(paired_bootstrap(_runs(rng, logit, seeds, 0.15), _runs(rng, logit, seeds, 0.15), resamples=1000,
                                rng_seed=r).verdict == "tied" for r in range(200))
    assert tied / 200 >= 0.95, tied


def test_a_linear_probe_28_points_below_full_is_decided_with_two_seeds():
    # Saved numbers: a probe whose every image is 2.2 logits harder (about 0.25 below full) with little seed
    # noise, full with the realistic seed noise; 2 seeds. (Over repetitions of this model the verdict is
    # "worse" in about 87% of 2-seed draws and 99% of 3-seed draws: the price of the seed-level t penalty.)
    rng, logit = np.random.default_rng(7), _difficulty()
    probe, full = _runs(rng, logit - 2.2, 2, 0.05), _runs(rng, logit, 2, 0.15)
    res = paired_bootstrap(probe, full)
    assert res.delta < -0.2 and res.high < 0 and res.verdict == "worse", res


def test_cost_is_negligible_3_seeds_500_images_10k_resamples():
    rng, logit = np.random.default_rng(0), _difficulty()
    s, f = _runs(rng, logit, 3, 0.15), _runs(rng, logit, 3, 0.15)
    t0 = time.perf_counter()
    res = paired_bootstrap(s, f)
    assert time.perf_counter() - t0 < 2.0 and res.resamples == 10_000  # measured 0.07-0.7 s on 2 shared CPUs
    again = paired_bootstrap(s, f)  # a fixed generator seed: the same saved runs give the same interval
    assert (again.low, again.high, again.verdict) == (res.low, res.high, res.verdict)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="same"):
        paired_bootstrap(np.ones((2, 5)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        paired_bootstrap(np.array([[np.nan, 1.0]]), np.ones((1, 2)))


def test_the_issues_digits_probe_is_decided_where_the_t_interval_was_not():
    # The issue's 2-seed digits compare: the linear probe 0.256 and 0.301 below full fine-tuning on 355 images,
    # which the seed t-interval called tied ([-0.565, +0.007], t = 12.7). Saved per-image results with those
    # numbers: full right on images 0-339 (seed 0) and 5-349 (seed 1); the probe on 0-248 and 20-257.
    def ones(a: int, b: int) -> np.ndarray:
        x = np.zeros(355)
        x[a:b] = 1.0
        return x

    full, probe = np.stack([ones(0, 340), ones(5, 350)]), np.stack([ones(0, 249), ones(20, 258)])
    t_iv = paired_interval(probe.mean(1), full.mean(1))
    assert (t_iv.low, t_iv.high) == (pytest.approx(-0.5652, abs=1e-4), pytest.approx(0.0075, abs=1e-4))
    assert verdict(t_iv) == "tied"
    res = paired_bootstrap(probe, full)
    assert res.delta == pytest.approx(-0.2789, abs=1e-4) and res.verdict == "worse" and res.high < 0, res


# --- a metric recomputed per resample (mAP, mIoU): statistic_bootstrap ---------------------------------------


def _mean_stat(scores: np.ndarray):
    return lambda counts: np.atleast_2d(counts) @ scores / np.atleast_2d(counts).sum(1)


def test_statistic_bootstrap_of_a_mean_is_the_paired_bootstrap():
    # The same draws (same generator seed and shapes): only the flip part is estimated differently (from the
    # replicates instead of the two-way residuals), so the intervals agree to Monte-Carlo error.
    rng, logit = np.random.default_rng(5), _difficulty()
    s, f = _runs(rng, logit, 3, 0.3), _runs(rng, logit, 3, 0.3)
    ref = paired_bootstrap(s, f, resamples=4000)
    got = statistic_bootstrap([_mean_stat(r) for r in s], [_mean_stat(r) for r in f], 500, resamples=4000)
    assert got.delta == pytest.approx(ref.delta, abs=1e-12)
    assert got.high - got.low == pytest.approx(ref.high - ref.low, rel=0.05)
    counts = np.random.default_rng(9).multinomial(500, np.ones(500) / 500, 4000)
    per_seed = np.stack([_mean_stat(a)(counts) - _mean_stat(b)(counts) for a, b in zip(s, f)], axis=1)
    assert replicate_seed_scale((s - f).mean(1), per_seed, 500) == pytest.approx(seed_scale(s - f), rel=0.05)


def test_replicate_seed_scale_without_flips_is_the_t_penalty():
    deltas = np.array([0.1, 0.3])
    per_seed = np.tile(deltas, (50, 1))  # every resample gives each seed its own difference: no image flips
    assert replicate_seed_scale(deltas, per_seed, 72) == pytest.approx(seed_scale(np.array([[0.1] * 4, [0.3] * 4])))
    assert replicate_seed_scale(deltas[:1], per_seed[:, :1], 72) == 1.0


@pytest.fixture(scope="module")
def simulation():
    from ..fixtures import load_benchmark

    sim = load_benchmark("verdict_calibration")
    return sim, sim.detection_test_set(np.random.default_rng(2))


@pytest.mark.parametrize("seeds", [2, 3])
def test_detection_a_strategy_against_itself_reads_tied_at_least_95_percent(simulation, seeds):
    # 30 repetitions x 200 resamples here (~15 s); benchmarks/verdict_calibration.py --detection runs the full
    # calibration (docs/detection.md). mAP is recomputed from simulated per-image records on every resample.
    sim, test_set = simulation
    rng = np.random.default_rng(40 + seeds)
    tied = [sim.detection_verdict(rng, test_set, seeds, 0.15, 0.0, r, 200) for r in range(30)]
    assert tied.count("tied") / 30 >= 0.95, tied


def test_detection_a_real_map_gap_is_decided_with_two_seeds(simulation):
    # Objects 3 logits harder: about 0.23 mAP50-95 below full fine-tuning (0.30) on 72 images, fixed draws.
    sim, test_set = simulation
    rng = np.random.default_rng(7)
    mine = [sim.ap_statistic(sim.detection_run(rng, test_set, 0.05, 3.0)) for _ in range(2)]
    full = [sim.ap_statistic(sim.detection_run(rng, test_set, 0.15)) for _ in range(2)]
    res = statistic_bootstrap(mine, full, 72)
    assert res.delta < -0.15 and res.high < 0 and res.verdict == "worse" and res.resamples == 1000, res


def test_statistic_bootstrap_refuses_unpaired_seeds():
    with pytest.raises(ValueError, match="baseline partner"):
        statistic_bootstrap([_mean_stat(np.ones(3))], [], 3)
