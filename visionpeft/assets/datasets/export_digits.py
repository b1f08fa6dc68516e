"""Export scikit-learn's handwritten digits into ``digits/`` beside this file (ImageFolder PNGs) + ``digits.yaml``.

Run once by the maintainers (needs ``pip install scikit-learn``); the PNGs are committed so the
quickstart needs neither scikit-learn nor a network. Deterministic: the 8x8 images (values 0..16) are
scaled to 0..255, upscaled to 32x32 with bicubic interpolation and saved as 8-bit grayscale PNGs;
within each class, every 5th image (by its index in ``load_digits()``) goes to ``val/``, the rest to
``train/``.

    python visionpeft/assets/datasets/export_digits.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32
ROOT = Path(__file__).resolve().parent / "digits"


def main() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    if ROOT.exists():
        shutil.rmtree(ROOT)
    seen: dict[int, int] = {}
    for idx, (img, label) in enumerate(zip(digits.images, digits.target)):
        label = int(label)
        k = seen.get(label, 0)
        seen[label] = k + 1
        split = "val" if k % 5 == 4 else "train"
        out = ROOT / split / str(label)
        out.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(np.round(img * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").resize((SIZE, SIZE), Image.BICUBIC).save(
            out / f"digit_{idx:04d}.png", optimize=True
        )
    counts = {s: sum(1 for _ in (ROOT / s).rglob("*.png")) for s in ("train", "val")}
    print(f"wrote {counts} to {ROOT}")


if __name__ == "__main__":
    main()
