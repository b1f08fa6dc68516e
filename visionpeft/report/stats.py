"""Statistics of a seeded compare: mean, standard deviation, Student-t confidence intervals, paired deltas.

Pure Python (no numpy/scipy): the report needs a handful of numbers per strategy.

* **Interval over seeds** (:func:`mean_interval`): the two-sided 95% Student t-interval of the mean,
  ``mean +- t_{0.975, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation (``n - 1`` in the
  denominator). It assumes the per-seed results are independent draws around the strategy's true mean; with
  few seeds it is wide, which is the honest answer.
* **Paired difference** (:func:`paired_interval`): the per-seed differences ``strategy(seed k) - full(seed k)``
  (same seed: same data order, same head initialisation where the architectures allow) and the t-interval of
  their mean. Pairing removes the seed-to-seed noise both runs share, so it is narrower than comparing two
  independent intervals.
* **Verdict** (:func:`verdict`): ``better`` when the paired interval lies above 0, ``worse`` below 0, ``tied``
  when it contains 0, ``n/a (1 seed)`` without an interval.

The t quantiles come from a table (:data:`T975`: df 1-30, then 40, 60, 120), interpolated linearly in
``1/df`` between table rows and towards the normal quantile 1.959964 beyond df 120 (error below 1e-3 for every
df). Source of the values: any Student-t table (e.g. NIST/SEMATECH e-Handbook of Statistical Methods, 1.3.6.7.2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["T975", "Interval", "t_quantile_975", "mean_interval", "paired_interval", "verdict"]

#: Two-sided 95% Student-t quantiles ``t_{0.975, df}``.
T975: dict[int, float] = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
    20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
    29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980,
}
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    """``t_{0.975, df}``: the table value, else interpolated linearly in ``1/df`` (normal limit at df = inf).

    Raises:
        ValueError: ``df < 1`` (one value has no spread, so no interval).
    """
    if df < 1:
        raise ValueError(f"a t-interval needs at least 2 values (df >= 1), got df={df}")
    if df in T975:
        return T975[df]
    rows = sorted(T975)
    lo = max(d for d in rows if d < df)
    hi = min((d for d in rows if d > df), default=None)
    x, x_lo = 1.0 / df, 1.0 / lo
    x_hi, y_hi = (1.0 / hi, T975[hi]) if hi is not None else (0.0, _Z975)
    return y_hi + (T975[lo] - y_hi) * (x - x_hi) / (x_lo - x_hi)


@dataclass(frozen=True)
class Interval:
    """A mean with its spread over ``n`` values.

    Attributes:
        mean: arithmetic mean.
        std: sample standard deviation (``n - 1``); ``None`` for one value.
        low / high: the 95% t-interval of the mean; ``None`` for one value.
        n: number of values (seeds).
    """

    mean: float
    std: float | None
    low: float | None
    high: float | None
    n: int

    @property
    def half_width(self) -> float | None:
        """``t * s / sqrt(n)`` (``None`` without an interval)."""
        return None if self.high is None else self.high - self.mean


def mean_interval(values: Sequence[float]) -> Interval:
    """Mean, sample standard deviation and the 95% Student t-interval of the mean of ``values``.

    Raises:
        ValueError: no values.
    """
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("mean_interval: no values")
    mean = sum(xs) / n
    if n == 1:
        return Interval(mean, None, None, None, 1)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return Interval(mean, std, mean - half, mean + half, n)


def paired_interval(values: Sequence[float], baseline: Sequence[float]) -> Interval:
    """The t-interval of the mean per-seed difference ``values[k] - baseline[k]``.

    Raises:
        ValueError: the two sequences differ in length (every seed needs its baseline partner) or are empty.
    """
    if len(values) != len(baseline):
        raise ValueError(f"paired_interval: {len(values)} values but {len(baseline)} baseline values; "
                         "each seed needs its baseline run with the same seed")
    return mean_interval([float(a) - float(b) for a, b in zip(values, baseline)])


def verdict(delta: Interval) -> str:
    """``better`` / ``worse`` / ``tied`` (interval contains 0) from a paired interval; ``n/a (1 seed)``."""
    if delta.low is None or delta.high is None:
        return "n/a (1 seed)"
    if delta.low > 0:
        return "better"
    if delta.high < 0:
        return "worse"
    return "tied"
