"""A tiny synthetic ImageFolder for smoke tests, notebooks and bug reports (no download, < 1 s).

Each class is a coloured square on a noisy background at a random position, so any model that learns
at all separates the classes within a few steps; a model that does not learn stays at chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["make_toy_imagefolder", "TOY_COLOURS"]

TOY_COLOURS = ((230, 40, 40), (40, 200, 60), (50, 80, 230), (230, 200, 40), (200, 60, 220), (40, 210, 210))


def make_toy_imagefolder(root: str | Path, classes: int = 3, train_per_class: int = 16,
                         val_per_class: int = 8, size: int = 24, seed: int = 0,
                         test_per_class: int = 0) -> Path:
    """Write ``root/{train,val[,test]}/class_<i>/img_<n>.png`` and return ``root``."""
    from PIL import Image

    if not 1 <= classes <= len(TOY_COLOURS):
        raise ValueError(f"classes must be in 1..{len(TOY_COLOURS)}, got {classes}")
    rng = np.random.default_rng(seed)
    root = Path(root)
    counts = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    for split, n in counts.items():
        for c in range(classes):
            out = root / split / f"class_{c}"
            if n:
                out.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
                side = size // 2
                y, x = rng.integers(0, size - side + 1, size=2)
                img[y:y + side, x:x + side] = TOY_COLOURS[c]
                Image.fromarray(img).save(out / f"img_{i:03d}.png")
    return root
