"""The image dataset: decode with PIL (:mod:`.image`), transform with albumentations, clear errors for bad files."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .image import ImageError, read_image
from .samples import DataError

__all__ = ["ImageDataset", "read_image", "find_bad_images", "DataError", "ImageError"]

log = logging.getLogger("visionpeft.data")


def find_bad_images(samples: Sequence[tuple[Path, int]]) -> list[Path]:
    """Files among ``samples`` that fail to decode completely (a full decode, not just the header)."""
    bad = []
    for path, _ in samples:
        try:
            read_image(path)
        except ImageError:
            bad.append(path)
    return bad


def check_files_exist(samples: Sequence[tuple[Path, int]], split: str, source: str = "") -> None:
    """Refuse a sample list naming files that do not exist (a stat per file; no decoding)."""
    missing = [path for path, _ in samples if not Path(path).is_file()]
    if missing:
        raise DataError(
            f"{source + ': ' if source else ''}split {split!r}: {len(missing)} listed image "
            f"file{'s' if len(missing) > 1 else ''} not found "
            f"({', '.join(str(p) for p in missing[:3])}{', ...' if len(missing) > 3 else ''}); fix the paths in the "
            "dataset's list, or set dataset.skip_bad_images: true to skip (and count) them"
        )


class ImageDataset(Dataset):
    """``(image tensor, label)`` pairs from ``(path, label)`` samples.

    Args:
        samples: ``(path, class index)`` pairs.
        transform: albumentations ``Compose`` (called as ``transform(image=array)["image"]``).
        skip_bad_images: decode every file once up front and drop the unreadable ones (logged and
            counted in ``skipped``); otherwise an unreadable file stops training with its name.
        check_files: without ``skip_bad_images``, stat every listed file now (cheap) so a missing one stops the
            run before training, not when an epoch or validation first reads it.
        seed: makes random augmentations a function of ``(seed, epoch, index)``: the same in every run,
            with any number of workers, and after ``resume``. ``None`` leaves albumentations' own RNG.
    """

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Callable[..., Any] | None,
                 skip_bad_images: bool = False, split: str = "", seed: int | None = None,
                 check_files: bool = True, source: str = "") -> None:
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.skipped: list[Path] = []
        if not skip_bad_images and check_files:
            check_files_exist(self.samples, split, source)
        if skip_bad_images:  # a missing file is unreadable too: skipped and counted
            bad = set(find_bad_images(self.samples))
            if bad:
                self.skipped = sorted(bad)
                self.samples = [s for s in self.samples if s[0] not in bad]
                log.warning("skipped %d unreadable images in split %r (first: %s)",
                            len(bad), split, self.skipped[0])
        if not self.samples:
            raise DataError(f"split {split!r}: no readable images left")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (workers must be re-created to see it)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = read_image(path)
        if self.transform is None:
            return torch.from_numpy(image).permute(2, 0, 1).contiguous(), label
        if self.seed is not None and hasattr(self.transform, "set_random_seed"):
            state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
            self.transform.set_random_seed(int(state))
        return self.transform(image=image)["image"], label
