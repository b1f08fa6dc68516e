"""Predict with a classification run: top-k classes and probabilities per image (``visionpeft predict``).

The model is the run's, rebuilt exactly as ``eval`` rebuilds it (base + adapter, :meth:`ClassificationTask.load_run`),
and every image goes through the run's own eval preprocessing (the data config recorded for ``eval``/``merge``:
resize the short side to ``img_size / crop_pct``, center crop, normalise) and the run's autocast precision, so a
val image gets the class ``eval`` counts for it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

__all__ = ["predict_images", "BATCH"]

#: Images per forward pass.
BATCH = 32


def _read(path: Path) -> Any:
    from ...data.image import ImageError, read_image
    from ..predict import unreadable

    try:
        return read_image(path)
    except ImageError as exc:
        raise unreadable(str(exc)) from None


def predict_images(run_dir: Path, images: list[Path], options: Any, out: Path) -> tuple[list[dict], dict[str, Any]]:
    """One record per image: ``{"file": ..., "predictions": [{"class", "index", "prob"}, ...]}`` (top-k, best first).

    Raises:
        ConfigError: an Ultralytics-only option (``conf``, ``imgsz``), or an unreadable image (naming it).
    """
    from ...data.transforms import build_transforms
    from ...errors import ConfigError
    from ..predict import merged_or_adapted
    from . import TASK
    from .model import resolve_device
    from .trainer import autocast_dtype

    for key in ("conf", "imgsz"):
        if getattr(options, key) is not None:
            raise ConfigError(f"predict: {key}= applies to Ultralytics runs; a classification run uses its own eval "
                              "preprocessing (image size, crop, normalisation) as recorded for eval")
    recipe, model, _, meta = TASK.load_run(run_dir)
    model, info = merged_or_adapted(model, options.merged)
    device = resolve_device(options.device or recipe.train.device,
                            "predict: device" if options.device else "train.device (recorded)")
    model.to(device).eval()
    transform = build_transforms(meta["preprocess"], recipe.augment)[1]
    classes = list(meta["extra"]["classes"])
    k = min(options.topk or 5, len(classes))
    amp = autocast_dtype(recipe.train.amp, device)
    ctx = torch.autocast(device_type=device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    records = []
    with torch.no_grad():
        for start in range(0, len(images), BATCH):
            chunk = images[start:start + BATCH]  # decoded batch by batch: an unreadable image is one error naming it
            batch = torch.stack([transform(image=_read(p))["image"] for p in chunk]).to(device)
            with ctx:
                probs = model(batch).float().softmax(dim=1).cpu()
            top = probs.topk(k, dim=1)
            for i, (vals, idx) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                records.append({"file": str(images[start + i]), "predictions": [
                    {"class": classes[c], "index": c, "prob": p} for c, p in zip(idx, vals)]})
    pre = meta["preprocess"]
    return records, {**info, "preprocess": {"img_size": pre.img_size, "crop_pct": pre.crop_pct, "mean": list(pre.mean),
                                            "std": list(pre.std), "interpolation": pre.interpolation}}
