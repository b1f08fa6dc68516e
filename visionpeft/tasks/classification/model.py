"""Build the model of a classification run: timm backbone + weights + strategies, reproducibly."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from ...devices import torch_device
from ...spec import ModelSpec

__all__ = ["seed_everything", "build_base", "build_adapted", "resolve_device", "torch_threads"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` CPU threads in torch inside the block (``None``: leave the count alone); restore it after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def resolve_device(name: Any, where: str = "train.device") -> torch.device:
    """The run's device, checked against this machine (``auto``: this rank's CUDA device when available, else
    CPU); one line naming ``where`` and the devices this machine has otherwise (:mod:`visionpeft.devices`)."""
    return torch_device(name, where)


def build_base(recipe: Any, num_classes: int) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """The pretrained model with a fresh ``num_classes`` head, its spec and its data config.

    The head is initialised after seeding with ``recipe.seed``, so the same recipe always gives the
    same base model: adapters saved from a run load back onto it with a matching fingerprint.
    """
    from ...backends import backend_named
    from ...engines import get_engine

    backend = backend_named(get_engine(recipe.task).backend)  # the engine's backend (timm)
    seed_everything(recipe.seed)
    # Fixed-size models (ViTs) are created for the recipe's image size (position embeddings resampled).
    model = backend.build_model(recipe.model, num_classes=num_classes, weights=recipe.weights,
                                pretrained=recipe.pretrained, img_size=recipe.augment.img_size)
    if recipe.head_init_std is not None:
        _init_head(model, recipe.head_init_std)
    return model, backend.spec(model), backend.data_config(model)


@torch.no_grad()
def _init_head(model: nn.Module, std: float) -> None:
    """N(0, std^2) weights and zero bias for every Linear classifier ``get_classifier()`` returns."""
    heads = model.get_classifier() if hasattr(model, "get_classifier") else ()
    for head in heads if isinstance(heads, (tuple, list)) else (heads,):
        if isinstance(head, nn.Linear):
            nn.init.normal_(head.weight, std=std)
            if head.bias is not None:
                nn.init.zeros_(head.bias)


def build_adapted(recipe: Any, strategies: list[dict[str, Any]], num_classes: int, *,
                  probe: Callable[[dict[str, Any]], Any] | None = None,
                  resolved: list[dict[str, Any]] | None = None) -> tuple[nn.Module, ModelSpec, Any, dict[str, Any]]:
    """:func:`build_base` + ``visionpeft.apply(strategies)``; returns ``(model, spec, plan, data_config)``.

    Args:
        probe: given the model's data config, the :class:`~visionpeft.strategies.importance.GradientProbe` for
            budgets with ``allocation: importance`` (called only when an entry asks for it).
        resolved: what budgets resolved in an earlier run of the same recipe (``plan.json``), taken as it is.
    """
    from ...api import apply
    from .importance import needs_importance

    model, spec, cfg = build_base(recipe, num_classes)
    gradients = probe(cfg) if probe is not None and needs_importance(strategies) else None
    plan = apply(model, strategies, spec, probe=gradients, resolved=resolved)
    return model, spec, plan, cfg
