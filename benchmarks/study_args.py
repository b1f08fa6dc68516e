"""What the compare-driven studies (``lr_study.py``, ``augment_study.py``) share: their common options and the
machine line under their tables."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The classification models and data sets the studies run (paths under the shared material).
MODELS = {"vit": ("vit_tiny_patch16_224", "weights/vit_tiny_patch16_224.in1k.safetensors"),
          "cnn": ("tf_efficientnet_lite0", "weights/tf_efficientnet_lite0.in1k.safetensors")}
DATASETS = {"flowers": "data/flowers5_128", "hymenoptera": "data/hymenoptera_data"}


def shared_dir() -> Path:
    """The shared material: ``VISIONPEFT_SHARED``, else ``../shared`` beside the repository."""
    return Path(os.environ.get("VISIONPEFT_SHARED", REPO.parent / "shared")).resolve()


def add_study_args(p: argparse.ArgumentParser, name: str) -> None:
    """``--runs --epochs --img-size --per-class --json --out --update-docs`` (results under
    ``benchmarks/results/<name>.{json,md}``)."""
    p.add_argument("--runs", type=Path, default=None, help="where the compares go (default: a temporary folder)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--json", type=Path, default=REPO / f"benchmarks/results/{name}.json")
    p.add_argument("--out", type=Path, default=REPO / f"benchmarks/results/{name}.md")
    p.add_argument("--update-docs", type=Path, default=None)


def machine_line(seconds: float) -> str:
    """``Machine: <cpu>, <n> cores; total <minutes> min.``"""
    cpu = platform.processor() or platform.machine()
    return f"Machine: {cpu}, {os.cpu_count()} cores; total {seconds / 60:.1f} min."
