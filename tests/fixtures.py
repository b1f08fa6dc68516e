"""Tiny pure-torch models shared by the tests."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class TinyCNN(nn.Module):
    """stem conv+BN -> block conv+BN (grouped) -> depthwise conv -> pooled linear head."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=2), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(self.block(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


def tiny_cnn(seed: int = 0, num_classes: int = 4) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN(num_classes)


# Golden parameter counts of TinyCNN, written out as arithmetic.
STEM = 3 * 8 * 3 * 3 + 8 + 2 * 8  # conv weight + bias + BN affine
BLOCK = 16 * (8 // 2) * 3 * 3 + 16 + 2 * 16
DW = 16 * 1 * 3 * 3 + 2 * 16
FC = 16 * 4 + 4
TOTAL = STEM + BLOCK + DW + FC


@contextlib.contextmanager
def killed_at_epoch(monkeypatch, epoch: int):
    """Inside the block, classification training is killed (``KeyboardInterrupt``) when ``epoch`` (1-based)
    starts, as a Ctrl-C there would; the block must end by that kill. The trainer is restored afterwards."""
    import pytest

    from visionpeft.tasks.classification.trainer import Trainer

    original = Trainer.train_epoch
    calls = {"n": 0}

    def dying(self):
        calls["n"] += 1
        if calls["n"] == epoch:
            raise KeyboardInterrupt("killed")
        original(self)

    monkeypatch.setattr(Trainer, "train_epoch", dying)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(Trainer, "train_epoch", original)


def load_benchmark(name: str, alias: str | None = None):
    """The script ``benchmarks/<name>.py`` as a fresh module (benchmarks are scripts, not a package).

    Registered in ``sys.modules`` under ``alias or name`` while it runs, as an import would: dataclasses look their
    module up there."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:  # as when a script runs: its helpers (benchmarks/sections.py) import by name
        sys.path.insert(0, str(folder))
    path = folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(alias or name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
