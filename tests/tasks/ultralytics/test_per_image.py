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


def _classify_folder(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(4):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(5):
                pixels = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}{c}_{i}.png")
    return root


def test_classify_records_name_each_result_by_its_own_image(tmp_path):
    # Ultralytics' classify validation loader shuffles; the recorder's loader does not, so file i's label is the
    # class folder file i is in (a shuffled loader paired with the dataset's file list would mislabel).
    import torch
    from ultralytics.models.yolo.classify import ClassificationValidator
    from ultralytics.nn.tasks import ClassificationModel

    data = _classify_folder(tmp_path / "cls")
    torch.manual_seed(0)
    model = ClassificationModel("yolov8n-cls.yaml", nc=4, verbose=False)
    model.names = {i: f"class{i}" for i in range(4)}
    validator = ClassificationValidator(args={"data": str(data), "imgsz": 32, "batch": 4, "workers": 0,
                                              "split": "val", "plots": False, "device": "cpu", "half": False},
                                        save_dir=tmp_path / "val")
    recorder = ImageRecorder(get("classify"))
    recorder.attach(validator)
    results = validator(model=model)
    rec = recorder.records()
    assert len(rec.files) == 20 and rec.metric == "top1"
    assert [f"class{label}" for label in rec.arrays["labels"]] == [f.split("/")[0] for f in rec.files]
    assert statistic(rec)(np.ones((1, 20)))[0] == pytest.approx(results["metrics/accuracy_top1"], abs=1e-9)


def test_records_that_do_not_reproduce_the_validators_metric_are_not_saved(tmp_path):
    recorder = ImageRecorder(get("depth"))
    recorder.items, recorder.files = [0.5, 0.7], ["a.png", "b.png"]
    assert recorder.save(tmp_path, "test", 0.6) is not None  # the mean over images: saved
    assert recorder.save(tmp_path, "test", 0.61) is None  # another value (e.g. COCO's pycocotools mAP): not
    assert not (tmp_path / "test_images.npz").exists()  # ... and an older file of the run is gone too
    assert ImageRecorder(get("detect")).save(tmp_path, "test", 0.1) is None  # nothing recorded
