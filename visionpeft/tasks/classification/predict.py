"""Predict with a classification run: top-k classes and probabilities per image (``visionpeft predict``).

The model is the run's, rebuilt exactly as ``eval`` rebuilds it (base + adapter, :meth:`ClassificationTask.load_run`),
and every image goes through the run's own eval preprocessing (the data config recorded for ``eval``/``merge``:
resize the short side to ``img_size / crop_pct``, center crop, normalise) and the run's autocast precision, so a
val image gets the class ``eval`` counts for it.
"""

from __future__ import annotations

import contextlib
import time
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


def _synced(device: torch.device) -> float:
    """The time after the device finished its queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def predict_images(run_dir: Path, images: list[Path], options: Any, out: Path,
                   on_image: Any = None) -> tuple[list[dict], dict[str, Any]]:
    """One record per image: ``{"file": ..., "predictions": [{"class", "index", "prob"}, ...]}`` (top-k, best first).

    ``on_image(index, total, file, predictions, speed)`` after each image (see :data:`..predict.OnImage`); a
    batch's times are shared equally by its images.

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
    records: list[dict] = []
    with torch.no_grad():
        size = meta["preprocess"].img_size
        with ctx:  # warm-up, as yolo predict does: the first call's one-off setup is not the model's speed
            model(torch.zeros(1, 3, size, size, device=device))
        for start in range(0, len(images), BATCH):
            chunk = images[start:start + BATCH]  # decoded batch by batch: an unreadable image is one error naming it
            t0 = time.perf_counter()
            batch = torch.stack([transform(image=_read(p))["image"] for p in chunk]).to(device)
            t1 = _synced(device)
            with ctx:
                probs = model(batch).float().softmax(dim=1).cpu()
            t2 = _synced(device)
            top = probs.topk(k, dim=1)
            new = [{"file": str(path), "predictions": [{"class": classes[c], "index": c, "prob": p}
                                                       for c, p in zip(idx, vals)]}
                   for path, vals, idx in zip(chunk, top.values.tolist(), top.indices.tolist())]
            t3 = time.perf_counter()
            speed = {k_: 1000 * t / len(chunk) for k_, t in
                     (("preprocess", t1 - t0), ("inference", t2 - t1), ("postprocess", t3 - t2))}
            for i, record in enumerate(new):
                if on_image is not None:
                    on_image(start + i, len(images), record["file"], record["predictions"], speed)
            records += new
    pre = meta["preprocess"]
    return records, {**info, "preprocess": {"img_size": pre.img_size, "crop_pct": pre.crop_pct, "mean": list(pre.mean),
                                            "std": list(pre.std), "interpolation": pre.interpolation}}
