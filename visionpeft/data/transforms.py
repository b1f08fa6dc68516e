"""albumentations pipelines from the recipe's ``augment`` section and the model's data config.

Train: RandomResizedCrop -> HorizontalFlip -> ColorJitter -> Normalize. Eval: resize the short side to
``img_size / crop_pct`` -> CenterCrop(img_size) -> Normalize (timm's eval transform).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["DataConfig", "resolve_data_config", "build_transforms"]

_INTERP = {"nearest": 0, "bilinear": 1, "bicubic": 2, "area": 3, "lanczos": 4}  # cv2.INTER_* values


@dataclass(frozen=True)
class DataConfig:
    """Input size, normalisation and eval crop of a model (from timm's pretrained config)."""

    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 0.875
    interpolation: str = "bicubic"


def resolve_data_config(model_cfg: dict[str, Any], augment: Any) -> DataConfig:
    """Merge the model's data config (``input_size``, ``mean``, ``std``, ...) with recipe overrides."""
    size = model_cfg.get("input_size", (3, 224, 224))
    img_size = augment.img_size or int(size[-1])
    return DataConfig(
        img_size=int(img_size),
        mean=tuple(float(v) for v in model_cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in model_cfg.get("std", (0.229, 0.224, 0.225))),
        crop_pct=float(augment.crop_pct or model_cfg.get("crop_pct", 0.875) or 0.875),
        interpolation=str(model_cfg.get("interpolation", "bicubic")),
    )


def build_transforms(cfg: DataConfig, augment: Any) -> tuple[Any, Any]:
    """Return ``(train_transform, eval_transform)``: albumentations ``Compose`` objects producing CHW tensors."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    interp = _INTERP.get(cfg.interpolation, 2)
    s = cfg.img_size
    tail = [A.Normalize(mean=cfg.mean, std=cfg.std, max_pixel_value=255.0), ToTensorV2()]
    eval_ops = [A.SmallestMaxSize(max_size=int(math.floor(s / cfg.crop_pct)), interpolation=interp),
                A.CenterCrop(height=s, width=s)]
    if augment.random_resized_crop:
        train_ops: list[Any] = [A.RandomResizedCrop(size=(s, s), scale=tuple(augment.scale),
                                                    ratio=tuple(augment.ratio), interpolation=interp)]
    else:
        train_ops = list(eval_ops)
    if augment.hflip > 0:
        train_ops.append(A.HorizontalFlip(p=augment.hflip))
    if augment.color_jitter > 0:
        j = augment.color_jitter
        train_ops.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=0.0, p=0.8))
    return A.Compose(train_ops + tail), A.Compose(eval_ops + tail)
