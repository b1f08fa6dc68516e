"""Decoding one image file: every PIL mode to 8-bit RGB with its real values, or one error naming the file.

Modes and what they become (``H x W x 3`` ``uint8``):

* ``RGB``, ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: PIL's own conversion to RGB (grey
  replicated to three channels, palette looked up, CMYK inverted); exact for 8-bit data.
* ``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``: the colour channels; alpha is dropped (as torchvision's and timm's
  loaders do). Pixels stay as stored, transparent ones included.
* ``I;16`` / ``I;16L`` / ``I;16B`` / ``I;16N`` (16-bit grey, e.g. PNG, TIFF): scaled ``v * 255 / 65535``,
  rounded. PIL's own ``convert("RGB")`` clips these at 255, which turns most 16-bit images into {0, 255}.
* ``I`` (32-bit integer): read as 16-bit data (how older Pillow versions open 16-bit PNGs) when every value is
  in ``0..65535``; otherwise refused.
* ``F`` (32-bit float): values in ``[0, 1]`` are scaled by 255, values in ``[0, 255]`` kept; anything else
  (negative, NaN, larger) is refused: there is no single right mapping to pixels.

A file that cannot be decoded completely (empty, truncated, not an image), an image over PIL's
decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``; raise it in your script if you really have such
images), or a refused mode raises :class:`ImageError`, whose message names the file and what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .samples import DataError

__all__ = ["ImageError", "read_image", "open_checked", "to_rgb8", "SKIP_HINT"]

SKIP_HINT = "Fix or delete the file, or set dataset.skip_bad_images: true in the recipe to skip unreadable images"

_ALPHA = {"RGBA": "RGB", "LA": "L", "PA": "RGBA", "RGBa": "RGB", "La": "L"}
_SIXTEEN = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageError(DataError):
    """An image file is unreadable, too large to decode safely, or in a mode with no faithful 8-bit form."""


def _grey16_to_rgb8(values: np.ndarray) -> np.ndarray:
    grey = np.rint(values.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def to_rgb8(img: Any, path: Path | str) -> np.ndarray:
    """``img`` (a PIL image) as an ``H x W x 3`` ``uint8`` array with its real values (see module docstring).

    Raises:
        ImageError: a mode or value range with no faithful 8-bit form, naming ``path``.
    """
    mode = img.mode
    if mode in _SIXTEEN:
        return _grey16_to_rgb8(np.asarray(img))
    if mode == "I":
        values = np.asarray(img)
        lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ImageError(f"{path}: a 32-bit integer image with values {lo}..{hi}, outside 0..65535; save it as "
                             f"8-bit (or 16-bit) RGB or greyscale. {SKIP_HINT}")
        return _grey16_to_rgb8(values)
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        finite = bool(np.isfinite(values).all())
        lo, hi = (float(values.min()), float(values.max())) if values.size and finite else (0.0, 0.0)
        if not finite or lo < 0 or hi > 255:
            shown = f"{lo:g}..{hi:g}" if finite else "NaN or infinite"
            raise ImageError(f"{path}: a floating-point image with values {shown}; only [0, 1] or [0, 255] map to "
                             f"pixels. Save it as 8-bit RGB or greyscale. {SKIP_HINT}")
        grey = np.rint(values * (255.0 if hi <= 1.0 else 1.0)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in _ALPHA:
        img = img.convert(_ALPHA[mode])  # drop alpha first: PA -> RGBA -> RGB below
        mode = img.mode
        if mode in _ALPHA:
            img = img.convert(_ALPHA[mode])
    try:
        return np.asarray(img.convert("RGB"))
    except (ValueError, OSError) as exc:
        raise ImageError(f"{path}: PIL image mode {mode!r} cannot be converted to RGB ({exc}). Save the image as "
                         f"RGB or greyscale. {SKIP_HINT}") from None


def open_checked(path: Path | str) -> Any:
    """Open ``path`` with PIL and decode it completely; the loaded PIL image (caller closes it).

    Raises:
        ImageError: empty, truncated or unidentifiable file, or an image over the decompression-bomb limit.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        try:
            img.load()
        except BaseException:
            img.close()
            raise
        return img
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"{path}: image too large to decode safely ({str(exc).rstrip('.')}); shrink it, or raise "
            f"PIL.Image.MAX_IMAGE_PIXELS if you trust it. {SKIP_HINT}"
        ) from None
    # ImportError: once Ultralytics is imported in the process it patches PIL's open to retry unknown
    # files as HEIF, which raises ModuleNotFoundError (pi_heif) instead of UnidentifiedImageError.
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, ImportError, EOFError) as exc:
        raise ImageError(f"{path}: cannot read this image ({type(exc).__name__}: {exc}). {SKIP_HINT}") from None


def read_image(path: Path | str) -> np.ndarray:
    """Decode ``path`` to an RGB ``uint8`` HWC array, or raise :class:`ImageError` naming the file."""
    img = open_checked(path)
    try:
        return to_rgb8(img, path)
    finally:
        img.close()
