"""CPU training-memory accounting: parts add up and follow what autograd really saves."""

from __future__ import annotations

import torch
from torch import nn

import visionpeft
from visionpeft.profiling import SavedTensorMeter, measure_step_memory

from .fixtures import tiny_cnn


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    model(torch.randn(4, 3, 16, 16)).sum().backward()
    opt.step()
    opt.zero_grad()


def _stats(strategies: list[dict]):
    model = tiny_cnn()
    visionpeft.apply(model, strategies)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    _step(model, opt)
    with measure_step_memory(model, opt) as stats:
        _step(model, opt)
    return model, stats


def test_saved_tensor_meter_counts_unique_storages() -> None:
    w = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(4, 8)
    with SavedTensorMeter(exclude=[w]) as meter:
        h = x @ w  # saves x (and w, excluded)
        y = h.relu()  # saves its output (4 x 8 floats)
        y.sum().backward()
    assert meter.bytes == x.numel() * 4 + y.numel() * 4


def test_parts_match_the_plan() -> None:
    model, full = _stats([{"method": "full"}])
    n = sum(p.numel() for p in model.parameters())
    assert full.params == 4 * n and full.grads == 4 * n and full.optimizer >= 2 * 4 * n
    assert full.activations > 0
    _, head = _stats([{"method": "head"}])
    fc = 16 * 4 + 4
    assert head.grads == 4 * fc and head.optimizer < full.optimizer
    # Nothing trainable below the head: autograd saves only the head's input.
    assert head.activations == 4 * 16 * 4
    assert head.peak_bytes < full.peak_bytes
