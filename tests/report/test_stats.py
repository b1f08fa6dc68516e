"""The compare statistics: t-intervals over seeds and paired deltas, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from visionpeft.report.stats import T975, mean_interval, paired_interval, t_quantile_975, verdict


def test_mean_interval_hand_computed():
    # top-1 of three seeds: mean 0.82; deviations -0.02, +0.02, 0 -> s^2 = 0.0008 / 2, s = 0.02;
    # half-width = t_{0.975,2} * s / sqrt(3) = 4.303 * 0.02 / 1.7320508 = 0.0496868.
    iv = mean_interval([0.80, 0.84, 0.82])
    assert iv.n == 3
    assert iv.mean == pytest.approx(0.82, abs=1e-12)
    assert iv.std == pytest.approx(0.02, abs=1e-12)
    assert iv.half_width == pytest.approx(0.0496868, abs=1e-7)
    assert (iv.low, iv.high) == (pytest.approx(0.7703132, abs=1e-7), pytest.approx(0.8696868, abs=1e-7))


def test_paired_interval_hand_computed_and_verdicts():
    # Per-seed differences 0.02, 0.04, 0.01: mean 0.07/3; sum of squared deviations 0.0021 - 3 (0.07/3)^2 = 0.0014/3,
    # so s^2 = 0.0014/6 and the half-width is 4.303 * sqrt(0.0014/6) / sqrt(3) = 0.0379489: the interval
    # [-0.0146, +0.0613] contains 0 although every seed is ahead -> tied.
    iv = paired_interval([0.80, 0.84, 0.82], [0.78, 0.80, 0.81])
    assert iv.mean == pytest.approx(0.07 / 3, abs=1e-12)
    assert iv.std == pytest.approx(math.sqrt(0.0014 / 6), abs=1e-12)
    assert iv.half_width == pytest.approx(4.303 * math.sqrt(0.0014 / 6) / math.sqrt(3), abs=1e-12)
    assert iv.half_width == pytest.approx(0.0379489, abs=1e-7)
    assert verdict(iv) == "tied"
    # Differences 0.02, 0.03, 0.025: mean 0.025, s = 0.005, half-width 4.303 * 0.005 / sqrt(3) = 0.0124217.
    better = paired_interval([0.52, 0.53, 0.525], [0.5, 0.5, 0.5])
    assert better.low == pytest.approx(0.025 - 0.0124217, abs=1e-7) and verdict(better) == "better"
    worse = paired_interval([0.5, 0.5, 0.5], [0.52, 0.53, 0.525])
    assert worse.high == pytest.approx(-0.025 + 0.0124217, abs=1e-7) and verdict(worse) == "worse"


def test_one_seed_has_no_interval_and_no_verdict():
    iv = mean_interval([0.7])
    assert (iv.mean, iv.std, iv.low, iv.high) == (0.7, None, None, None)
    assert verdict(paired_interval([0.7], [0.6])) == "n/a (1 seed)"


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no values"):
        mean_interval([])
    with pytest.raises(ValueError, match="each seed needs its baseline"):
        paired_interval([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="df >= 1"):
        t_quantile_975(0)


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 31), 35, 40, 50, 60, 90, 120, 200, 1000, 10**6]:
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1.5e-3), df
    assert T975[2] == 4.303 and T975[30] == 2.042
