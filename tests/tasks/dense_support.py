"""Tiny datasets for Ultralytics' dense tasks, written by the tests: ``depth`` (RGB + uint16 depth PNGs) and
``semantic`` from mask PNGs (``masks_dir``). ``semantic`` from polygons trains on a coco8-seg copy instead
(:func:`.detection_support.copy_dataset`).

Layouts follow Ultralytics 8.4.190's readers:

* depth (``ultralytics.data.dataset.DepthDataset``): ``images/<split>/x.jpg`` beside ``depth/<split>/x.png``, a
  single-channel uint16 PNG whose value / ``depth_scale`` is metres (0 = no measurement); the yaml has
  ``depth_scale`` (Ultralytics' default 1000: 1000 = 1 m) and one class;
* semantic masks (``SemanticDataset``): ``masks/<split>/x.png``, an 8-bit PNG of class ids, 255 = ignore.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_depth_dataset", "write_mask_dataset", "DEPTH_SCALE"]

#: PNG value per metre in the synthetic depth sets (Ultralytics' default ``depth_scale``).
DEPTH_SCALE = 1000


def _scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image (uint8, HxWx3) and its depth in metres (float, HxW): a tilted floor (far at the top, 1..6 m)
    with a nearer box whose colour says how near, so a network can learn depth from the pixels."""
    h = w = size
    rows = np.linspace(6.0, 1.0, h)[:, None] * np.ones((1, w))
    depth = rows.copy()
    y0, x0 = rng.integers(0, h // 2, size=2)
    bh, bw = rng.integers(h // 4, h // 2, size=2)
    near = float(rng.uniform(0.5, 1.5))
    depth[y0:y0 + bh, x0:x0 + bw] = near
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[..., 0] = (255 * (depth / 6.0)).astype(np.uint8)  # red grows with distance
    img[..., 1] = 80
    img[..., 2] = (255 * (1 - depth / 6.0)).clip(0, 255).astype(np.uint8)
    return img, depth


def write_depth_dataset(root: Path, n_train: int = 4, n_val: int = 4, size: int = 64, seed: int = 0,
                        depth_scale: int = DEPTH_SCALE) -> Path:
    """Write a synthetic depth set under ``root`` and return its ``data.yaml``.

    ``n_train`` + ``n_val`` RGB JPEGs of ``size`` x ``size`` px and as many uint16 depth PNGs (value =
    metres x ``depth_scale``); the yaml names one class (``depth``) as Ultralytics' depth yamls do.
    """
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "depth" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, depth = _scene(rng, size)
            Image.fromarray(img).save(root / "images" / split / f"{split}{i}.jpg", quality=95)
            encoded = np.round(depth * depth_scale).astype(np.uint16)
            Image.fromarray(encoded).save(root / "depth" / split / f"{split}{i}.png")
    data = root / "data.yaml"
    data.write_text(f"train: images/train\nval: images/val\nnc: 1\nnames:\n  0: depth\nchannels: 3\n"
                    f"depth_scale: {depth_scale}\n")
    return data


def write_mask_dataset(root: Path, names: list[str], n_train: int = 4, n_val: int = 4, size: int = 64,
                       seed: int = 0) -> Path:
    """Write a semantic set with mask PNGs (``masks_dir: masks``) under ``root``; return its ``data.yaml``.

    Each image is split into vertical bands of the classes' colours; the mask holds the band's class id.
    """
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 255, size=(len(names), 3), dtype=np.uint8)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cuts = np.sort(rng.integers(1, size, size=len(names) - 1))
            mask = np.zeros((size, size), dtype=np.uint8)
            for c, start in enumerate(cuts, start=1):
                mask[:, start:] = c
            Image.fromarray(palette[mask]).save(root / "images" / split / f"{split}{i}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{split}{i}.png")
    data = root / "data.yaml"
    data.write_text(f"train: images/train\nval: images/val\nmasks_dir: masks\nnames: {names}\n")
    return data
