"""Fixtures shared by the detection task tests (module-scoped: each test module trains on its own copy)."""

from __future__ import annotations

import pytest

from .ultralytics_support import copy_dataset


@pytest.fixture(scope="module")
def coco8(shared, tmp_path_factory):
    """A copy of coco8's data.yaml in tmp: Ultralytics writes label caches beside the data."""
    return copy_dataset(shared, "coco8", tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def weights(shared):
    """The COCO-backbone YOLOv5n checkpoint in ../shared (read only)."""
    return str(shared / "weights" / "yolov5nu-cocobackbone.pt")
