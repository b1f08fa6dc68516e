"""The per-image recorder against Ultralytics' own metrics objects, fed what a validator feeds them.

For every mAP task the recorder wraps the task's metrics class (``DetMetrics``, ``SegmentMetrics``,
``PoseMetrics``, ``OBBMetrics``) exactly as during a validation; the metric recomputed from its records over every
image once must be the value the metrics object computes itself, with random, non-trivial per-image stats (so a
recorder that kept the wrong ``tp`` columns or lost an image would fail: the box and mask flags differ).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ultralytics")

from ultralytics.utils.metrics import DetMetrics, OBBMetrics, PoseMetrics, SegmentMetrics  # noqa: E402

from visionpeft.report.image_statistics import statistic  # noqa: E402
from visionpeft.tasks.ultralytics.per_image import ImageRecorder  # noqa: E402
from visionpeft.ultralytics_tasks import get  # noqa: E402

#: task -> (metrics class, the attribute holding its primary metric's Metric, extra tp keys it is fed)
CASES = {"detect": (DetMetrics, "box", ()), "segment": (SegmentMetrics, "seg", ("tp_m",)),
         "pose": (PoseMetrics, "pose", ("tp_p",)), "obb": (OBBMetrics, "box", ())}


class _Validator:
    """The two methods the recorder wraps, as a validator calls them."""

    def __init__(self, metrics):
        self.metrics = metrics

    def init_metrics(self, model):
        self.metrics.names = {0: "a", 1: "b", 2: "c"}

    def update_metrics(self, preds, batch):
        for stat in preds:
            self.metrics.update_stats(stat)


def _stat(rng, i, extra):
    p, t = int(rng.integers(0, 25)), int(rng.integers(0, 6))
    stat = {"tp": rng.random((p, 1)) < np.linspace(0.8, 0.2, 10), "conf": rng.random(p).astype(np.float32),
            "pred_cls": rng.integers(0, 3, p).astype(np.float32), "target_cls": rng.integers(0, 3, t).astype(
                np.float32), "im_name": f"{i:03d}.jpg"}
    stat["target_img"] = np.unique(stat["target_cls"])
    for key in extra:
        stat[key] = rng.random((p, 1)) < np.linspace(0.6, 0.05, 10)
    return stat


@pytest.mark.parametrize("task", sorted(CASES))
def test_records_give_the_metrics_objects_own_map(task):
    cls, attr, extra = CASES[task]
    rng = np.random.default_rng(len(task))
    validator = _Validator(cls())
    recorder = ImageRecorder(get(task))
    recorder.attach(validator)
    validator.init_metrics(None)
    stats = [_stat(rng, i, extra) for i in range(30)]
    for start in range(0, 30, 8):  # batches of 8 images
        validator.update_metrics(stats[start:start + 8], {})
    validator.metrics.process()
    reported = getattr(validator.metrics, attr).map
    rec = recorder.records()
    assert rec.files == tuple(f"{i:03d}.jpg" for i in range(30)) and rec.metric == get(task).primary
    assert statistic(rec)(np.ones((1, 30)))[0] == pytest.approx(reported, abs=1e-12) and reported > 0.05
    if extra:  # the box flags give another value: the recorder kept the primary metric's own flags
        assert validator.metrics.box.map != pytest.approx(reported, abs=1e-3)


def test_a_validation_that_saw_no_image_is_refused():
    with pytest.raises(ValueError, match="recorded no image"):
        ImageRecorder(get("detect")).records()
