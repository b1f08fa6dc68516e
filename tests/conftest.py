"""Test-wide settings: offline Ultralytics, a temporary config dir, and paths to ../shared material."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Ultralytics reads these at import time: set them before any test imports it.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="visionpeft-yolo-cfg-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """``../shared`` beside the repository (override with ``VISIONPEFT_SHARED``)."""
    return Path(os.environ.get("VISIONPEFT_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not (path / "data" / "MANIFEST.md").is_file():
        pytest.skip(f"real test material not found at {path} (set VISIONPEFT_SHARED)")
    return path


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests run tiny models (often float64): with 2 torch threads on a busy 2-core machine, OpenMP threads
    waiting on each other made them 10-100x slower. One thread; the other core serves loaders/subprocesses."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
