"""``visionpeft predict``'s console: a line per image with speed, or for many images a summary."""

from __future__ import annotations

import io

from visionpeft.tasks.predict_console import PredictConsole, describe, mean_speed, speed_line

CLS = [{"class": "cat", "index": 0, "prob": 0.912}, {"class": "dog", "index": 1, "prob": 0.061},
       {"class": "fox", "index": 2, "prob": 0.02}, {"class": "owl", "index": 3, "prob": 0.007}]
DET = [{"name": "person", "class": 0, "confidence": 0.9, "box": {}},
       {"name": "bus", "class": 5, "confidence": 0.8, "box": {}},
       {"name": "person", "class": 0, "confidence": 0.7, "box": {}}]
SPEED = {"preprocess": 1.0, "inference": 3.0, "postprocess": 0.5}


def test_describe_classes_and_detections():
    assert describe(CLS) == "cat 0.91, dog 0.06, fox 0.02"
    assert describe(DET) == "2 person, 1 bus"
    assert describe([{"name": "tabby", "class": 281, "confidence": 0.5}]) == "tabby 0.50"  # Ultralytics classify
    assert describe([]) == "(no detections)"


def test_a_line_per_image_then_the_speed():
    out, bar = io.StringIO(), io.StringIO()
    console = PredictConsole(out, bar, max_lines=3)
    console(0, 2, "/x/a.png", CLS, SPEED)
    console(1, 2, "/x/b.png", DET, {"preprocess": 3.0, "inference": 5.0, "postprocess": 1.5})
    console.finish()
    assert out.getvalue().splitlines() == [
        "image 1/2 /x/a.png: cat 0.91, dog 0.06, fox 0.02 4.5ms",
        "image 2/2 /x/b.png: 2 person, 1 bus 9.5ms",
        "Speed: 2.0ms preprocess, 4.0ms inference, 1.0ms postprocess per image (2 images)",
    ]
    assert bar.getvalue() == ""


def test_many_images_give_a_summary_not_a_line_each():
    out, bar = io.StringIO(), io.StringIO()  # not a terminal: no bar drawn into logs
    console = PredictConsole(out, bar, max_lines=2)
    for i in range(5):
        console(i, 5, f"/x/{i}.png", DET if i % 2 else CLS, SPEED)
    console.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and bar.getvalue() == ""
    assert lines[0] == "5 images, objects: person 4, cat 3, bus 2"  # most frequent first
    assert lines[1] == speed_line(mean_speed([SPEED] * 5), 5)
    classes_only = PredictConsole(io.StringIO(), io.StringIO(), max_lines=1)
    for i in range(3):
        classes_only(i, 3, "f", CLS if i else list(reversed(CLS)), SPEED)
    classes_only.finish()
    assert classes_only.out.getvalue().splitlines()[0] == "3 images, top-1: cat 2, owl 1"


SEM = [{"name": "road", "class": 0, "pixel_ratio": 0.2}, {"name": "car", "class": 1, "pixel_ratio": 0.7},
       {"name": "sky", "class": 2, "pixel_ratio": 0.1}]
DEPTH = [{"height": 4, "width": 6, "min_m": 0.5, "max_m": 7.25, "median_m": 2.0}]


def test_semantic_and_depth_rows():
    """Semantic: the classes covering most pixels; depth: the map's range (rows of tasks/ultralytics/dense.py)."""
    assert describe(SEM) == "car 0.70, road 0.20, sky 0.10"
    assert describe(DEPTH) == "depth 0.50-7.25 m (median 2.00)"
    assert describe([{"height": 4, "width": 6}]) == "depth (no valid pixels)"
    console = PredictConsole(io.StringIO(), io.StringIO(), max_lines=1)
    for i in range(3):
        console(i, 3, "f", SEM if i else DEPTH, SPEED)
    console.finish()
    assert console.out.getvalue().splitlines()[0] == "3 images, top-1: car 2, depth map 1"
