"""Training batches for ``allocation: importance`` budgets of a classification run.

The probe reads a fixed, seeded subset of the training images through the *eval* transform (no random
augmentation), the same subset on every process (scores are also averaged across processes, so every rank picks
the same ranks under DDP), and computes the run's cross-entropy on the freshly built model (its new head
included). It draws nothing from the global random generators, so a run's adapter init, data order and
augmentation are those it would have without the probe.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from ...data import build_transforms
from ...data.dataset import ImageDataset
from ...strategies.importance import GradientProbe
from ..distributed import world_size

__all__ = ["needs_importance", "importance_probe"]


def needs_importance(strategies: Sequence[Any]) -> bool:
    """Whether any entry asks for ``allocation: importance`` (entries are mappings or configs)."""
    def get(e: Any, key: str) -> Any:
        return e.get(key) if isinstance(e, dict) else getattr(e, key, None)

    return any(get(e, "budget") is not None and get(e, "allocation") == "importance" for e in strategies)


def importance_probe(recipe: Any, data_cfg: Any, samples: Sequence[tuple[Path, int]],
                     device: torch.device) -> GradientProbe:
    """A :class:`GradientProbe` over ``samples`` (the training split) for ``recipe``'s run on ``device``.

    Batches have ``train.batch_size`` images; ``n`` batches use the first ``n * batch_size`` images of a
    permutation seeded with ``recipe.seed``. The model is moved to ``device`` for the passes and back.
    """
    _, eval_tf = build_transforms(data_cfg, recipe.augment)
    dataset = ImageDataset(samples, eval_tf, check_files=False, split=recipe.dataset.train_split)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.train.label_smoothing)
    batch = recipe.train.batch_size

    def losses(model: nn.Module, n: int) -> Iterator[Tensor]:
        gen = torch.Generator().manual_seed(recipe.seed)
        order = torch.randperm(len(dataset), generator=gen)[: n * batch].tolist()
        # Its own generator: a DataLoader without one draws its base seed from torch's global generator.
        loader = DataLoader(Subset(dataset, order), batch_size=batch, shuffle=False, num_workers=0, generator=gen)
        home = next(model.parameters()).device
        model.to(device)
        try:
            for images, labels in islice(loader, n):
                yield loss_fn(model(images.to(device)), labels.to(device))
        finally:
            model.to(home)

    def reduce(scores: Tensor) -> Tensor:
        if world_size() <= 1:
            return scores
        import torch.distributed as dist

        t = scores.to(device)
        dist.all_reduce(t)
        return (t / world_size()).cpu()

    return GradientProbe(losses=losses, reduce=reduce)
