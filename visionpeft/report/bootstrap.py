"""The paired two-level bootstrap over seeds and test examples: a strategy against full fine-tuning.

Input: per-example scores (``1.0`` correct / ``0.0`` wrong for classification) of a strategy and of the baseline,
``(K seeds, N examples)`` each, row ``k`` of both trained with seed ``k`` and column ``i`` the same test example.
The statistic is the mean paired difference ``D = mean_k mean_i (s[k, i] - f[k, i])`` (the difference of the
mean accuracies over seeds). Its 95% interval comes from a **two-stage (hierarchical) bootstrap**
(Davison & Hinkley 1997, *Bootstrap Methods and their Application*, section 3.8 "Hierarchical data"; used for
ML benchmarks by Bouthillier et al. 2021, "Accounting for variance in machine learning benchmarks", MLSys):

1. **Seeds**: draw ``K`` seeds with replacement. A seed moves as a pair (strategy run k, full run k), so the
   noise both share (data order, shared augmentation) cancels as in the seed t-interval.
2. **Examples**: draw ``N`` example indices with replacement, the **same** indices for the strategy and the
   baseline and for every drawn seed: the test set is one sample shared by all runs (seeds and examples are
   crossed, not nested), so an example the strategy systematically gets wrong counts once per replicate, not
   ``K`` times independently (resampling images per seed would shrink that part of the variance by ``K``; the
   crossed scheme is Owen's "pigeonhole" bootstrap, Owen 2007, *Ann. Appl. Stat.* 1(2)).

The interval is ``D +- 1.96 * SE`` with ``SE`` the standard deviation of ``resamples`` replicates of ``D`` (the
normal bootstrap interval, Davison & Hinkley section 5.2; percentiles are not used because with 2-3 seeds the
seed level of the replicates has only 3-10 atoms and light tails: at 2 seeds the 97.5% point lies at about 1.4
standard errors). The verdict is ``better`` / ``worse`` when the interval excludes 0, else ``tied``.

**Few seeds** (:func:`seed_scale`). A plain bootstrap of ``K`` seeds understates their variance by
``(K - 1) / K`` (half at 2 seeds) and ignores that ``K - 1`` degrees of freedom estimate it. The per-seed deltas'
spread is split into the part per-image flips explain (estimated from every image) and a seed-wide excess (one
run better on every image), and the seed level is rescaled so that its variance is the flip part plus the excess
times ``(t_{0.975, K-1} / z_{0.975})^2``: the Student-t penalty the seed-only interval pays, on the part only the
seeds can estimate. The flip part is resampled again at the image level, a deliberate double count.
Calibration (``tests/report/test_bootstrap.py`` and ``docs/classification.md``, "Compare protocol"): a strategy
compared with itself reads ``tied`` in 98.5-99.5% of simulated repetitions at 2 and 3 seeds with the seed-wide
noise the issue measured, 94-95.5% with twice and 92-95% with three times that noise (2 seeds cannot bound large
seed-wide shifts; 3 or more can); a probe 25 points below full reads ``worse`` in 69-83.5% of 2-seed draws and
all 3-seed draws. One seed has no seed level: its interval is the
image level only and the report gives no verdict.

**A metric that is not a mean over examples** (mAP, mIoU; :func:`statistic_bootstrap`): the same two stages, with
the metric recomputed on every replicate from the runs' per-image records (:mod:`.image_statistics`; an image
drawn twice counts twice). The flip part of the seed spread is then estimated from the replicates themselves
(:func:`replicate_seed_scale`). Calibration on simulated BCCD-sized detection results
(``benchmarks/verdict_calibration.py --detection``, ``docs/detection.md``).

Cost: drawing ``resamples x (K + N)`` indices, counting them, and one ``(B, N) x (N, K)`` matrix product; 10,000
replicates of 3 seeds x 500 images take 0.07-0.7 s (medians 0.07-0.2 s) on 2 shared CPU cores
(``benchmarks/verdict_calibration.py``), negligible next to training. The generator is seeded (``rng_seed``)
so a report is reproducible.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .stats import t_quantile_975

__all__ = ["BootstrapResult", "paired_bootstrap", "statistic_bootstrap", "draw_indices", "seed_scale",
           "inflate_seed_rows", "replicate_seed_scale", "RESAMPLES", "STATISTIC_RESAMPLES", "RNG_SEED"]

#: Bootstrap replicates per comparison (Monte-Carlo error of a 2.5% percentile: about 0.1 of its own spread).
RESAMPLES = 10_000
#: Replicates for a statistic recomputed per resample (mAP): 1,000 put the Monte-Carlo error of the standard error
#: at about 2% of itself (``1 / sqrt(2 B)``), and each replicate costs ``2 K`` metric evaluations (about 1 ms each).
STATISTIC_RESAMPLES = 1_000
#: The generator seed: the same saved runs always give the same interval.
RNG_SEED = 0

Statistic = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BootstrapResult:
    """A paired bootstrap comparison.

    Attributes:
        delta: mean paired difference (strategy minus baseline), in the score's units (accuracy: 0-1).
        low / high: the normal interval at ``level`` (``delta +- z * bootstrap standard error``).
        verdict: ``better`` / ``worse`` (interval excludes 0), ``tied``, or ``n/a (1 seed)``.
        seeds / examples: the ``K x N`` shape compared.
        resamples: replicates drawn.
        seconds: wall time of the bootstrap.
    """

    delta: float
    low: float
    high: float
    verdict: str
    seeds: int
    examples: int
    resamples: int
    seconds: float


def seed_scale(diff: np.ndarray) -> float:
    """The factor on the per-seed deltas' deviations that makes the seed level honest with few seeds.

    ``diff (K, N)``: paired differences. With ``d_k`` the row means, the spread of the ``d_k`` has two sources:
    the example-level flips (estimated with ``(K-1)(N-1)`` degrees of freedom from the residuals of the two-way
    table, ``v_flip = sigma_c^2 / N``: the method-of-moments estimate of a crossed random-effects model, Searle,
    Casella & McCulloch 1992, *Variance Components*, ch. 4) and a seed-wide shift, estimated as
    ``excess = max(0, s_d^2 - v_flip)`` with only ``K - 1`` degrees of freedom. The factor makes the bootstrap's
    seed-level variance ``(v_flip + q * excess) / K`` with ``q = (t_{0.975, K-1} / z_{0.975})^2`` (42 at 2
    seeds, 4.8 at 3): the part known from many examples is kept (and, resampled again at the example level,
    counted twice), the part known from ``K - 1`` degrees of freedom gets the Student-t penalty a seed-only
    interval would give it. The bootstrap's own ``(K - 1) / K`` shrinkage of a resampled mean is undone too
    (Davison & Hinkley 1997, section 3.8). ``K = 1``: 1.0 (no seed level).
    """
    k, n = diff.shape
    if k < 2:
        return 1.0
    row = diff.mean(axis=1)
    spread = float(row.var())  # ddof 0: what resampling K values sees
    if spread <= 0.0:
        return 1.0
    resid = diff - diff.mean(axis=0, keepdims=True) - (row - row.mean())[:, None]
    v_flip = float((resid**2).sum()) / ((k - 1) * max(n - 1, 1)) / n
    excess = max(0.0, float(row.var(ddof=1)) - v_flip)
    q = (t_quantile_975(k - 1) / _z(0.95)) ** 2
    return math.sqrt((v_flip + q * excess) / spread)


def inflate_seed_rows(diff: np.ndarray) -> np.ndarray:
    """``diff (K, N)`` with every row shifted so its mean's deviation from the grand mean grows by
    :func:`seed_scale` (the examples within a row are untouched). ``K = 1``: unchanged."""
    if diff.shape[0] < 2:
        return diff
    row = diff.mean(axis=1, keepdims=True)
    return diff + (seed_scale(diff) - 1.0) * (row - row.mean())


def _z(level: float) -> float:
    """The two-sided standard-normal quantile of ``level`` (1.959964 at 0.95)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2)


def draw_indices(rng: np.random.Generator, resamples: int, seeds: int, examples: int) -> tuple[np.ndarray, np.ndarray]:
    """The bootstrap draws: seed indices ``(B, K)`` and example indices ``(B, N)``, both with replacement."""
    return (rng.integers(0, seeds, (resamples, seeds), dtype=np.int32),
            rng.integers(0, examples, (resamples, examples), dtype=np.int32))


def _counts(idx: np.ndarray, size: int) -> np.ndarray:
    """How often each of ``size`` values occurs in every row of ``idx (B, m)``: ``(B, size)`` float64."""
    b = idx.shape[0]
    flat = (idx + size * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * size).reshape(b, size).astype(np.float64)


def paired_bootstrap(strategy: np.ndarray, baseline: np.ndarray, resamples: int = RESAMPLES,
                     rng_seed: int = RNG_SEED, level: float = 0.95) -> BootstrapResult:
    """The two-stage paired bootstrap of the module docstring.

    Args:
        strategy / baseline: per-example scores ``(K seeds, N examples)``, rows paired by seed, columns by
            example (a 1-D array is one seed).
        resamples: bootstrap replicates (default :data:`RESAMPLES`).
        rng_seed: the generator seed (default :data:`RNG_SEED`).
        level: interval coverage.

    Raises:
        ValueError: shapes differ, no example, or a non-finite score.
    """
    t0 = time.perf_counter()
    s, f = np.atleast_2d(np.asarray(strategy, float)), np.atleast_2d(np.asarray(baseline, float))
    if s.shape != f.shape or s.ndim != 2 or s.size == 0:
        raise ValueError(f"paired_bootstrap: strategy {s.shape} and baseline {f.shape} must be the same "
                         "(seeds, examples) shape, non-empty: every seed and example needs its baseline partner")
    if not (np.isfinite(s).all() and np.isfinite(f).all()):
        raise ValueError("paired_bootstrap: non-finite per-example scores")
    k, n = s.shape
    diff = inflate_seed_rows(s - f)
    seed_idx, ex_idx = draw_indices(np.random.default_rng(rng_seed), resamples, k, n)
    # replicate b = sum_k w[b,k] * sum_i v[b,i] * diff[k,i] / (K N): one (B,N) x (N,K) product.
    per_seed = _counts(ex_idx, n) @ diff.T
    reps = (_counts(seed_idx, k) * per_seed).sum(axis=1) / (k * n)
    return _result(float((s - f).mean()), reps, k, n, level, t0)


def _result(delta: float, reps: np.ndarray, k: int, n: int, level: float, t0: float) -> BootstrapResult:
    """The normal interval ``delta +- z * SE(reps)`` and its verdict."""
    # Normal interval from the bootstrap's standard error, not its percentiles: with 2-3 seeds the seed level of
    # the replicates is a mixture of 3-10 atoms whose tails are far lighter than their variance implies (at 2
    # seeds the 97.5% point sits at 1.4 standard errors, not 1.96), so percentiles would undercover.
    half = _z(level) * float(reps.std(ddof=1))
    low, high = delta - half, delta + half
    word = "n/a (1 seed)" if k < 2 else "better" if low > 0 else "worse" if high < 0 else "tied"
    return BootstrapResult(delta=delta, low=low, high=high, verdict=word, seeds=k, examples=n,
                           resamples=len(reps), seconds=time.perf_counter() - t0)


def replicate_seed_scale(deltas: np.ndarray, per_seed: np.ndarray, examples: int) -> float:
    """:func:`seed_scale` for a statistic that is not a mean over examples (mAP, mIoU).

    ``deltas (K,)``: each seed's difference on the whole test set; ``per_seed (B, K)``: the same differences on
    ``B`` example resamples (the same resample for every seed). The example-level flip part of the deltas'
    spread is estimated from how the seeds' differences move apart across resamples:
    ``v_flip = K / (K - 1) * N / (N - 1) * mean_k Var_b(per_seed[b, k] - mean_k' per_seed[b, k'])``, which for a
    mean over examples equals :func:`seed_scale`'s residual estimate up to Monte-Carlo error (the multinomial
    resample of a mean of ``a_i`` has variance ``var(a) / N``). The rest is as :func:`seed_scale`.
    """
    k = len(deltas)
    if k < 2:
        return 1.0
    spread = float(deltas.var())
    if spread <= 0.0:
        return 1.0
    centred = per_seed - per_seed.mean(axis=1, keepdims=True)
    v_flip = k / (k - 1) * examples / max(examples - 1, 1) * float(centred.var(axis=0, ddof=1).mean())
    excess = max(0.0, float(deltas.var(ddof=1)) - v_flip)
    q = (t_quantile_975(k - 1) / _z(0.95)) ** 2
    return math.sqrt((v_flip + q * excess) / spread)


def statistic_bootstrap(strategy: Sequence[Statistic], baseline: Sequence[Statistic], examples: int,
                        resamples: int = STATISTIC_RESAMPLES, rng_seed: int = RNG_SEED,
                        level: float = 0.95) -> BootstrapResult:
    """The two-stage paired bootstrap of the module docstring for a metric recomputed on every resample.

    Args:
        strategy / baseline: per seed (paired by position), the function giving the run's metric on weighted
            example multisets, ``counts (B, N) -> (B,)`` (:mod:`.image_statistics`); the same ``N`` test examples
            in the same order for every run.
        examples: ``N``.
        resamples / rng_seed / level: as :func:`paired_bootstrap`.

    The delta is the mean over seeds of (strategy - baseline) on the whole test set (the validator's own
    numbers). Each replicate draws ``N`` examples (shared by every seed and both arms) and ``K`` seeds, computes
    every seed's difference on the drawn examples, moves each seed's column by :func:`replicate_seed_scale`
    (as :func:`inflate_seed_rows` does for means) and averages the drawn seeds.

    Raises:
        ValueError: different seed counts, no seed, or no example.
    """
    t0 = time.perf_counter()
    k = len(strategy)
    if k == 0 or k != len(baseline) or examples < 1:
        raise ValueError(f"statistic_bootstrap: {k} strategy and {len(baseline)} baseline seeds over {examples} "
                         "examples: every seed needs its baseline partner and at least one example")
    seed_idx, ex_idx = draw_indices(np.random.default_rng(rng_seed), resamples, k, examples)
    counts = _counts(ex_idx, examples)
    ones = np.ones((1, examples))
    deltas = np.array([float(s(ones)[0] - f(ones)[0]) for s, f in zip(strategy, baseline)])
    per_seed = np.stack([s(counts) - f(counts) for s, f in zip(strategy, baseline)], axis=1)
    per_seed = per_seed + (replicate_seed_scale(deltas, per_seed, examples) - 1.0) * (deltas - deltas.mean())
    reps = (_counts(seed_idx, k) * per_seed).sum(axis=1) / k
    return _result(float(deltas.mean()), reps, k, examples, level, t0)
