"""Layer importance from gradients, for ``allocation: importance`` of a parameter budget.

A layer's importance is the mean absolute gradient of its weight, ``mean_batches(mean_entries |dL/dW|)``, over a
few batches of training data: an importance *per parameter*, so equal scores give equal ranks whatever the
layers' sizes (sensitivity scores of this kind drive AdaLoRA's rank allocation, Zhang et al., ICLR 2023; here
they are measured once, before training, on the freshly built model).

Strategies never see data or a task: the trainer hands them a :class:`GradientProbe` through the apply context
(``visionpeft.apply(..., probe=...)``), which yields one scalar loss per batch for the model it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["GradientProbe", "gradient_importance"]


def _same(scores: Tensor) -> Tensor:
    return scores


@dataclass(frozen=True)
class GradientProbe:
    """Training batches for importance scores.

    Attributes:
        losses: ``losses(model, n)`` yields at most ``n`` scalar losses of ``model`` on training batches
            (a classifier: cross-entropy of ``model(images)``); it is called with the model in eval mode (no
            dropout, BatchNorm statistics untouched) and must not change the model.
        reduce: combines the per-layer scores across processes (an all-reduce mean under DDP, so every rank
            chooses the same ranks); the identity in a single process.
    """

    losses: Callable[[nn.Module, int], Iterable[Tensor]]
    reduce: Callable[[Tensor], Tensor] = field(default=_same)


def gradient_importance(model: nn.Module, layers: Sequence[nn.Module], probe: GradientProbe | None, batches: int,
                        method: str) -> list[float]:
    """Per layer of ``layers``, the mean absolute gradient of its weight over ``batches`` losses of ``probe``.

    The model is left as it was: train/eval mode, ``requires_grad`` flags and ``.grad`` (gradients are taken
    with ``torch.autograd.grad``, never accumulated into ``.grad``).

    Raises:
        ConfigError: no probe (importance needs training data) or no batch.
    """
    if probe is None:
        raise ConfigError(
            f"{method}.allocation: importance needs a few training batches, and none were given. 'visionpeft train'"
            " and 'compare' supply them for classification; detection and 'visionpeft params' do not: use "
            "allocation: uniform there (or pass probe=GradientProbe(...) to visionpeft.apply)"
        )
    weights = [layer.weight for layer in layers]  # type: ignore[union-attr]
    flags = {p: p.requires_grad for p in model.parameters()}
    training = {m: m.training for m in model.modules()}
    sums = torch.zeros(len(weights), dtype=torch.float64)
    seen = 0
    try:
        model.eval()
        for p in flags:
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        losses = iter(probe.losses(model, batches))
        try:
            for loss in losses:
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
                sums += torch.tensor([0.0 if g is None else g.detach().abs().mean().item() for g in grads],
                                     dtype=torch.float64)
                seen += 1
        finally:
            getattr(losses, "close", lambda: None)()  # a generator's own clean-up (moving the model back) runs now
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        for m, mode in training.items():
            m.training = mode
    if seen == 0:
        raise ConfigError(f"{method}.allocation: importance got no training batch to measure gradients on")
    return [float(s) for s in probe.reduce(sums / seen)]
