"""Issue 23 #5: every label geometry rule holds for every Ultralytics task (detect, segment, pose, OBB).

A zero-area segmentation polygon (three collinear points) passed the label check although degenerate polygons
are errors. Each case is one label line checked with the task's rule; the real datasets in ../shared must still
pass (the rules must not refuse good labels).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from visionpeft.errors import ConfigError
from visionpeft.tasks.ultralytics.labels import BoxRule, LabelRule, OBBRule, PoseRule, check_label_file

SEGMENT, DETECT, OBB = BoxRule(), BoxRule(), OBBRule()
POSE3, POSE2 = PoseRule((2, 3)), PoseRule((2, 2))

BAD = [  # (rule, label line, what the message says)
    (SEGMENT, "0 0.1 0.1 0.5 0.5 0.9 0.9", "degenerate polygon"),             # the example: diagonal
    (SEGMENT, "0 0.1 0.9 0.5 0.5 0.9 0.1", "degenerate polygon"),             # the other diagonal
    (SEGMENT, "0 0.1 0.1 0.5 0.5 0.1 0.1 0.5 0.5", "degenerate polygon"),     # back and forth on one segment
    (SEGMENT, "0 0.2 0.3 0.4 0.6 0.6 0.9 0.3 0.45", "degenerate polygon"),    # 4 points on y = 1.5x
    (SEGMENT, "0 0.1 0.1 0.1 0.1 0.1 0.1", "zero-width"),                     # one point three times
    (SEGMENT, "0 0.1 0.2 0.5 0.2 0.9 0.2", "zero-height"),                    # horizontal
    (DETECT, "0 0.1 0.1 0.5 0.5 0.9 0.9", "degenerate polygon"),              # a detector reads polygons too
    (OBB, "0 0.1 0.1 0.3 0.3 0.5 0.5 0.7 0.7", "degenerate polygon"),         # 4 collinear corners
    (OBB, "0 0.1 0.1 0.5 0.5 0.1 0.1 0.5 0.5", "degenerate polygon"),         # two corners twice
    (OBB, "0 0.2 0.2 0.2 0.2 0.2 0.6 0.2 0.6", "zero-width"),
    (POSE3, "0 0.5 0.5 0.0 0.2 0.4 0.4 2 0.6 0.6 2", "zero-width"),
    (POSE3, "0 0.5 0.5 0.2 0.2 0.4 0.4 3 0.6 0.6 2", "keypoint 1 has visibility 3"),
    (POSE3, "0 0.5 0.5 0.2 0.2 0.4 0.4 2 0.6 0.6 -1", "keypoint 2 has visibility -1"),
    (POSE3, "0 0.5 0.5 0.2 0.2 0.4 0.4 0.5 0.6 0.6 2", "keypoint 1 has visibility 0.5"),
    (POSE3, "0 0.5 0.5 0.2 0.2 0.4 nan 2 0.6 0.6 2", "not normalised"),
    (POSE2, "0 0.5 0.5 0.2 0.0 0.4 0.4 0.6 0.6", "zero-height"),
]

GOOD = [
    (SEGMENT, "0 0.1 0.1 0.5 0.5 0.9 0.1"),                      # a triangle
    (SEGMENT, "0 0.1 0.1 0.9 0.9 0.9 0.1 0.1 0.9"),               # a bow tie: self-crossing, but it has area
    (SEGMENT, "0 0.5 0.5 0.500002 0.5 0.500002 0.500002"),        # tiny but not flat
    (DETECT, "0 0.5 0.5 0.2 0.2"),
    (OBB, "0 0.1 0.1 0.3 0.1 0.3 0.2 0.1 0.2"),
    (OBB, "0 0.5 0.1 0.9 0.5 0.5 0.9 0.1 0.5"),                   # rotated 45 degrees
    (POSE3, "0 0.5 0.5 0.2 0.2 0 0 0 0.6 0.6 1"),                 # not labelled (0 0 0), hidden
    (POSE2, "0 0.5 0.5 0.2 0.2 0.4 0.4 0.6 0.6"),
]


@pytest.mark.parametrize(("rule", "line", "what"), BAD, ids=[f"{type(r).__name__}:{line}" for r, line, _ in BAD])
def test_degenerate_geometry_is_refused_with_file_and_line(tmp_path: Path, rule: LabelRule, line: str,
                                                           what: str) -> None:
    path = tmp_path / "x.txt"
    path.write_text(f"{line}\n")
    with pytest.raises(ConfigError) as info:
        check_label_file(path, nc=2, rule=rule)
    assert f"{path}:1: " in str(info.value) and what in str(info.value), str(info.value)


@pytest.mark.parametrize(("rule", "line"), GOOD, ids=[f"{type(r).__name__}:{line}" for r, line in GOOD])
def test_good_geometry_passes(tmp_path: Path, rule: LabelRule, line: str) -> None:
    path = tmp_path / "x.txt"
    path.write_text(f"{line}\n")
    assert check_label_file(path, nc=2, rule=rule) == 1


@pytest.mark.parametrize(("name", "rule"), [("coco8", DETECT), ("coco8-seg", SEGMENT), ("package-seg-small", SEGMENT),
                                            ("dota8", OBB), ("coco8-pose", PoseRule((17, 3))),
                                            ("tiger-pose", PoseRule((12, 2))), ("bccd_yolo", DETECT)])
def test_real_datasets_still_pass(shared: Path, name: str, rule: LabelRule) -> None:
    import yaml

    root = shared / "data" / name
    names = yaml.safe_load((root / "data.yaml").read_text())["names"]
    files = sorted(root.rglob("labels/**/*.txt"))
    assert files
    rows = sum(check_label_file(f, nc=len(names), rule=rule) for f in files)
    assert rows > 0
