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

**Detection** (``--detection``; mAP recomputed per resample, ``statistic_bootstrap``): a BCCD-sized test set of
72 images with 1 + Poisson(6) objects of 3 classes each, every object a fixed difficulty logit ~ N(1, 2). A run
adds a seed-wide logit shift ~ N(0, sigma) and finds each object with probability sigmoid(logit + shift), as a
prediction of its class whose confidence is sigmoid(logit + shift + N(0, 1)) and whose IoU is 0.4 + 0.6 * U**0.5
(a true positive at the thresholds 0.50:0.95 below it); every image also gets Poisson(3) false positives with
confidence U(0, 0.7). Settings: A/A at sigma 0.15 and 0.3, and a gap (the strategy's objects 1.5 logits harder,
about 0.10 mAP50-95 below) at sigma 0.15, each with 2 and 3 seeds.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from visionpeft.image_records import ImageRecords
from visionpeft.report.bootstrap import paired_bootstrap, statistic_bootstrap
from visionpeft.report.image_statistics import ap_statistic
from visionpeft.report.stats import paired_interval, verdict


def runs(rng: np.random.Generator, logit: np.ndarray, seeds: int, sigma: float) -> np.ndarray:
    """``(seeds, images)`` correctness of ``seeds`` simulated training runs (module docstring)."""
    shift = rng.normal(0.0, sigma, (seeds, 1))
    p = 1.0 / (1.0 + np.exp(-(logit[None] + shift)))
    return (rng.random(p.shape) < p).astype(float)


#: Ultralytics' IoU thresholds of the 10 ``tp`` columns.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def detection_test_set(rng: np.random.Generator, images: int = 72, classes: int = 3) -> tuple[np.ndarray, ...]:
    """One simulated test set: every object's image, class and difficulty logit (module docstring)."""
    per_image = 1 + rng.poisson(6, images)
    image = np.repeat(np.arange(images), per_image)
    return image, rng.integers(0, classes, len(image)), rng.normal(1.0, 2.0, len(image))


def detection_run(rng: np.random.Generator, test_set: tuple[np.ndarray, ...], sigma: float, harder: float = 0.0,
                  images: int = 72, classes: int = 3) -> ImageRecords:
    """One simulated training run's per-image test records (``ap`` kind, ``map50_95``)."""
    image, cls, logit = test_set
    z = logit - harder + rng.normal(0.0, sigma)
    found = rng.random(len(z)) < 1.0 / (1.0 + np.exp(-z))
    iou = 0.4 + 0.6 * rng.random(int(found.sum())) ** 0.5
    fp_image = np.repeat(np.arange(images), rng.poisson(3, images))
    conf = np.concatenate([1.0 / (1.0 + np.exp(-(z[found] + rng.normal(0.0, 1.0, int(found.sum()))))),
                           rng.uniform(0.0, 0.7, len(fp_image))])
    tp = np.concatenate([iou[:, None] >= IOU_THRESHOLDS[None], np.zeros((len(fp_image), 10), bool)])
    return ImageRecords("ap", "map50_95", tuple(f"{i}.jpg" for i in range(images)), {
        "tp": tp, "conf": conf.astype(np.float32),
        "pred_cls": np.concatenate([cls[found], rng.integers(0, classes, len(fp_image))]),
        "pred_image": np.concatenate([image[found], fp_image]), "target_cls": cls, "target_image": image})


def detection_verdict(rng: np.random.Generator, test_set: tuple[np.ndarray, ...], seeds: int, sigma: float,
                      harder: float, rep: int, resamples: int) -> str:
    """The verdict of one simulated detection compare (the strategy ``harder`` logits harder than full)."""
    mine = [ap_statistic(detection_run(rng, test_set, sigma, harder)) for _ in range(seeds)]
    full = [ap_statistic(detection_run(rng, test_set, sigma)) for _ in range(seeds)]
    return statistic_bootstrap(mine, full, len(set(test_set[0])), resamples=resamples, rng_seed=rep).verdict


def detection(reps: int, resamples: int) -> None:
    """Print the detection A/A and gap rates and the cost of one BCCD-sized bootstrap (module docstring)."""
    rng = np.random.default_rng(321)
    test_set = detection_test_set(np.random.default_rng(2))
    for sigma, harder, word in ((0.15, 0.0, "tied"), (0.3, 0.0, "tied"), (0.15, 1.5, "worse")):
        for seeds in (2, 3):
            hit = np.mean([detection_verdict(rng, test_set, seeds, sigma, harder, r, resamples) == word
                           for r in range(reps)])
            print(f"detection {'A/A' if not harder else 'gap'} sigma={sigma} seeds={seeds}: {word} {hit:.3f}",
                  flush=True)
    mine = [ap_statistic(detection_run(rng, test_set, 0.15)) for _ in range(3)]
    full = [ap_statistic(detection_run(rng, test_set, 0.15)) for _ in range(3)]
    times = sorted(statistic_bootstrap(mine, full, 72).seconds for _ in range(3))
    print(f"cost, detection, 3 seeds x 72 images x 1,000 resamples: min {times[0]:.1f} s, max {times[-1]:.1f} s")


def rates(a_runs: np.ndarray, b_runs: np.ndarray, word: str, rep: int, resamples: int) -> tuple[bool, bool]:
    """Whether the bootstrap and the seed t-interval each give ``word`` for one repetition."""
    boot = paired_bootstrap(a_runs, b_runs, resamples=resamples, rng_seed=rep).verdict == word
    return boot, verdict(paired_interval(a_runs.mean(1), b_runs.mean(1))) == word


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=200, help="repetitions per setting (default 200)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap replicates per repetition")
    p.add_argument("--detection", action="store_true", help="the detection (mAP) calibration instead")
    args = p.parse_args(argv)
    if args.detection:
        detection(args.reps, min(args.resamples, 1000))
        return
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
