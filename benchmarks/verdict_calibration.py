"""Calibration of the compare verdict (``visionpeft.report.bootstrap``) on simulated per-image test results.

The numbers in ``docs/classification.md`` ("Compare protocol", "Few seeds") come from this script::

    python benchmarks/verdict_calibration.py              # about 5 minutes on 2 CPU cores
    python benchmarks/verdict_calibration.py --reps 50    # a quick look

Model (the same as ``tests/report/test_bootstrap.py``): 500 test images with logit difficulties ~ N(2.5, 3)
(accuracy about 0.77, fixed for every repetition: one test set); every training run adds a seed-wide logit shift
~ N(0, sigma) and draws each image's correctness from its probability (per-image flips). sigma = 0.15 matches the
issue's measurement (full fine-tuning 0.784 -> 0.812 between two seeds on 500 held-out images).

* **A/A**: a strategy against itself under other seeds (both arms the same model): how often the verdict is
  ``tied`` (should be >= 95%), next to the seed-only t-interval's rate.
* **Probe gap**: a strategy 2.2 logits harder on every image (about 25 points below) with its own seed noise
  ``sigma_probe``: how often the verdict is ``worse``.
* **Cost**: seconds of one bootstrap of 3 seeds x 500 images x 10,000 resamples (min / median / max of 7).

Each rate is over ``--reps`` repetitions (binomial noise about sqrt(0.05 * 0.95 / reps): 1.5 points at 200).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from visionpeft.report.bootstrap import paired_bootstrap
from visionpeft.report.stats import paired_interval, verdict


def runs(rng: np.random.Generator, logit: np.ndarray, seeds: int, sigma: float) -> np.ndarray:
    """``(seeds, images)`` correctness of ``seeds`` simulated training runs (module docstring)."""
    shift = rng.normal(0.0, sigma, (seeds, 1))
    p = 1.0 / (1.0 + np.exp(-(logit[None] + shift)))
    return (rng.random(p.shape) < p).astype(float)


def rates(a_runs: np.ndarray, b_runs: np.ndarray, word: str, rep: int, resamples: int) -> tuple[bool, bool]:
    """Whether the bootstrap and the seed t-interval each give ``word`` for one repetition."""
    boot = paired_bootstrap(a_runs, b_runs, resamples=resamples, rng_seed=rep).verdict == word
    return boot, verdict(paired_interval(a_runs.mean(1), b_runs.mean(1))) == word


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=200, help="repetitions per setting (default 200)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap replicates per repetition")
    args = p.parse_args(argv)
    logit = np.random.default_rng(1).normal(2.5, 3.0, 500)
    rng = np.random.default_rng(123)
    for sigma in (0.0, 0.15, 0.3, 0.45):
        for seeds in (2, 3):
            hits = np.array([rates(runs(rng, logit, seeds, sigma), runs(rng, logit, seeds, sigma), "tied", r,
                                   args.resamples) for r in range(args.reps)])
            print(f"A/A sigma={sigma} seeds={seeds}: bootstrap tied {hits[:, 0].mean():.3f}  "
                  f"t-interval tied {hits[:, 1].mean():.3f}", flush=True)
    for sigma_probe, seeds in ((0.05, 2), (0.15, 2), (0.05, 3), (0.15, 3)):
        hits = np.array([rates(runs(rng, logit - 2.2, seeds, sigma_probe), runs(rng, logit, seeds, 0.15), "worse",
                               r, args.resamples) for r in range(args.reps)])
        print(f"probe sigma_probe={sigma_probe} seeds={seeds}: bootstrap worse {hits[:, 0].mean():.3f}  "
              f"t-interval worse {hits[:, 1].mean():.3f}", flush=True)
    a, b = runs(rng, logit, 3, 0.15), runs(rng, logit, 3, 0.15)
    times = sorted(paired_bootstrap(a, b).seconds for _ in range(7))
    print(f"cost, 3 seeds x 500 images x 10,000 resamples: min {times[0] * 1e3:.0f} ms, median "
          f"{times[3] * 1e3:.0f} ms, max {times[-1] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
