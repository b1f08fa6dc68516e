"""Ultralytics' metrics of resampled image multisets, from per-image records, against Ultralytics itself.

The reference for mAP is ``ultralytics.utils.metrics.ap_per_class`` run on the duplicated images (a drawn
image's predictions and labels repeated as often as it was drawn), for mIoU ``SemanticMetrics`` fed the
duplicated images; the records are random but structured like a validator's (classes without labels, labelled
classes without predictions, empty images).
"""

from __future__ import annotations

import numpy as np
import pytest

from visionpeft.image_records import ImageRecords, read_records, write_records
from visionpeft.report.image_statistics import ap_statistic, mean_statistic, miou_statistic, statistic

pytest.importorskip("ultralytics")
from ultralytics.utils.metrics import SemanticMetrics, ap_per_class  # noqa: E402

N, C = 40, 3


def _ap_records(seed: int, metric: str = "map50_95") -> ImageRecords:
    rng = np.random.default_rng(seed)
    pred_image, target_image = [], []
    for i in range(N):
        pred_image += [i] * int(rng.integers(0, 30))
        target_image += [i] * int(rng.integers(0, 8))
    p, t = len(pred_image), len(target_image)
    target_cls = rng.integers(0, C, t)
    target_cls[target_cls == 2] = 1 if seed % 2 else 2  # odd seeds: class 2 has predictions but no label
    quality = rng.random((p, 1))
    return ImageRecords("ap", metric, tuple(f"im{i}.jpg" for i in range(N)), {
        "tp": quality < np.linspace(0.8, 0.1, 10)[None], "conf": rng.random(p).astype(np.float32),
        "pred_cls": rng.integers(0, C + 1, p), "pred_image": np.array(pred_image),  # class 3: never labelled
        "target_cls": target_cls, "target_image": np.array(target_image)})


def _duplicated(rec: ImageRecords, counts: np.ndarray) -> tuple[np.ndarray, ...]:
    a = rec.arrays
    images = np.repeat(np.arange(N), counts)
    preds = np.concatenate([np.flatnonzero(a["pred_image"] == i) for i in images])
    labels = np.concatenate([np.flatnonzero(a["target_image"] == i) for i in images])
    return a["tp"][preds], a["conf"][preds], a["pred_cls"][preds], a["target_cls"][labels]


@pytest.mark.parametrize("seed", range(6))
def test_map_of_every_resample_is_ultralytics_ap_per_class_of_the_duplicated_images(seed):
    rec = _ap_records(seed)
    rng = np.random.default_rng(100 + seed)
    counts = np.stack([np.ones(N, int), *(rng.multinomial(N, np.ones(N) / N) for _ in range(4))])
    got50_95, got50 = ap_statistic(rec)(counts), ap_statistic(_ap_records(seed, "map50"))(counts)
    for b, c in enumerate(counts):
        ap = ap_per_class(*_duplicated(rec, c))[5]
        assert got50_95[b] == pytest.approx(ap.mean(), abs=1e-12)
        assert got50[b] == pytest.approx(ap[:, 0].mean(), abs=1e-12)
    assert len(set(np.round(got50_95, 9))) > 1  # resamples move the value: a no-op statistic would fail


@pytest.mark.parametrize("seed", range(3))
def test_the_whole_set_is_ap_per_class_even_with_tied_confidences(seed):
    # fp16 confidences (CUDA with AMP) tie often, and AP depends on the order of a tied TP and FP: the records keep
    # the validator's concatenation order and the statistic sorts it with Ultralytics' own np.argsort call.
    rec = _ap_records(seed)
    tied = dict(rec.arrays, conf=np.round(rec.arrays["conf"] * 4).astype(np.float32) / 4)  # 5 distinct values
    rec = ImageRecords("ap", "map50_95", rec.files, tied)
    a = rec.arrays
    assert ap_statistic(rec)(np.ones((1, N)))[0] == pytest.approx(
        ap_per_class(a["tp"], a["conf"], a["pred_cls"], a["target_cls"])[5].mean(), abs=1e-12)


def test_mask_and_pose_metrics_read_all_ten_iou_columns():
    rec = _ap_records(0)
    for metric in ("mask_map50_95", "pose_map50_95"):
        other = ImageRecords("ap", metric, rec.files, rec.arrays)
        assert ap_statistic(other)(np.ones((1, N)))[0] == ap_statistic(rec)(np.ones((1, N)))[0]
    with pytest.raises(ValueError, match="not an AP metric"):
        ap_statistic(ImageRecords("ap", "precision", rec.files, rec.arrays))


@pytest.mark.parametrize("nc", [1, 4])
def test_miou_of_a_resample_is_semantic_metrics_of_the_duplicated_images(nc):
    import torch

    rng = np.random.default_rng(nc)
    cm = 2 if nc == 1 else nc
    target = torch.from_numpy(rng.integers(0, cm, (N, 6, 6)))
    target[0] = 255  # an ignored image
    pred = torch.where(torch.from_numpy(rng.random((N, 6, 6)) < 0.7), target, torch.from_numpy(
        rng.integers(0, cm, (N, 6, 6))))
    pred[pred == 255] = 0
    per_image = []
    for i in range(N):
        m = SemanticMetrics(names={k: str(k) for k in range(nc)})
        m.update_stats(pred[i:i + 1], target[i:i + 1])
        per_image.append(m.matrix.numpy().astype(np.int64))
    rec = ImageRecords("confusion", "miou", tuple(map(str, range(N))), {"matrices": np.stack(per_image)},
                       binary=nc == 1)
    for counts in (np.ones(N, int), rng.multinomial(N, np.ones(N) / N)):
        idx = torch.from_numpy(np.repeat(np.arange(N), counts))
        ref = SemanticMetrics(names={k: str(k) for k in range(nc)})
        ref.update_stats(pred[idx], target[idx])
        ref.process()
        assert miou_statistic(rec)(counts[None])[0] == pytest.approx(ref._miou, rel=1e-6)


def test_mean_statistic_weights_drawn_images():
    rec = ImageRecords("mean", "delta1", ("a", "b", "c"), {"values": np.array([0.2, 0.5, 1.0])})
    assert statistic(rec)(np.array([[1, 1, 1], [0, 3, 0], [2, 0, 1]])).tolist() == pytest.approx(
        [1.7 / 3, 0.5, 1.4 / 3])
    assert mean_statistic(rec)(np.ones(3)).tolist() == pytest.approx([1.7 / 3])  # a 1-D count vector too


def test_records_round_trip_atomically_and_bad_files_read_as_none(tmp_path):
    rec = _ap_records(1)
    path = write_records(tmp_path, "test", rec)
    back = read_records(tmp_path, "test")
    assert path.name == "test_images.npz" and back.kind == "ap" and back.files == rec.files
    assert all(np.array_equal(back.arrays[k], np.asarray(v)) for k, v in rec.arrays.items())
    assert [p.name for p in tmp_path.iterdir()] == ["test_images.npz"]  # no temporary file left
    assert read_records(tmp_path, "val") is None
    path.write_bytes(b"not a zip")
    assert read_records(tmp_path, "test") is None
    bad = dict(rec.arrays, pred_image=rec.arrays["pred_image"] + N)  # an image index past the file list
    write_records(tmp_path, "test", ImageRecords("ap", "map50_95", rec.files, bad))
    assert read_records(tmp_path, "test") is None
    with pytest.raises(ValueError, match="missing"):
        ImageRecords("ap", "map50_95", rec.files, {"tp": rec.arrays["tp"]})


def test_reordering_by_name_keeps_each_images_predictions():
    rec = _ap_records(2)
    order = np.random.default_rng(0).permutation(N)
    moved = rec.reorder(order)
    assert moved.files == tuple(rec.files[i] for i in order)
    counts = np.random.default_rng(1).multinomial(N, np.ones(N) / N)
    assert ap_statistic(moved)(counts[order][None])[0] == pytest.approx(ap_statistic(rec)(counts[None])[0], abs=1e-15)


def test_a_truncated_records_file_reads_as_none(tmp_path):
    path = write_records(tmp_path, "test", _ap_records(3))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert read_records(tmp_path, "test") is None


def test_per_image_arrays_of_another_length_read_as_none(tmp_path):
    rec = ImageRecords("mean", "top1", ("a", "b"), {"values": np.ones(2), "labels": np.zeros(3, np.int64)})
    write_records(tmp_path, "test", rec)
    assert read_records(tmp_path, "test") is None
    write_records(tmp_path, "test", ImageRecords("mean", "top1", ("a", "b"), {"values": np.ones(2),
                                                                              "labels": np.zeros(2, np.int64)}))
    assert read_records(tmp_path, "test").arrays["labels"].tolist() == [0, 0]
