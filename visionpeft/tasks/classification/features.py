"""Feature caching for head-only training: run the frozen backbone once, then train the head on tensors.

Allowed only when it cannot change the result: every trainable parameter lies in the classifier, no
BatchNorm updates statistics, and the train transform is deterministic (no random crop, flip or jitter).
Dropout before the classifier (timm's ``drop_rate``) is skipped on cached features.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

__all__ = ["cache_blockers", "extract_features", "cached_loader"]


def cache_blockers(model: nn.Module, plan: Any, head_modules: tuple[str, ...], augment: Any) -> list[str]:
    """Reasons feature caching would change training (empty list: caching is exact)."""
    reasons = []
    outside = [n for n in plan.trainable if not any(n == h or n.startswith(h + ".") for h in head_modules)]
    if outside:
        reasons.append(f"{len(outside)} trainable tensors outside the head (e.g. {outside[0]})")
    if any(mode == "train" for mode in plan.bn_modes.values()):
        reasons.append("some BatchNorm layers update their statistics")
    if not augment.deterministic:
        reasons.append("the train transform is random (set augment.random_resized_crop: false, hflip: 0, "
                       "color_jitter: 0)")
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        reasons.append("the model has no forward_features/forward_head split")
    return reasons


@torch.no_grad()
def extract_features(model: nn.Module, loader: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled pre-logit features of every batch of ``loader`` (eval mode) and their labels."""
    was = model.training
    model.eval()
    feats, labels = [], []
    for x, y in loader:
        f = model.forward_head(model.forward_features(x.to(device)), pre_logits=True)
        feats.append(f.float().cpu())
        labels.append(y.cpu())
    model.train(was)
    return torch.cat(feats), torch.cat(labels)


def cached_loader(feats: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool,
                  seed: int, drop_last: bool = False) -> DataLoader:
    """A loader over cached features (in memory, no workers needed).

    Shuffling uses a single-replica ``DistributedSampler`` with the run's seed, exactly like the image
    loader, so a cached run sees the same batches in the same order as an uncached one. The features are
    this rank's shard already, so there is no further splitting.
    """
    dataset = TensorDataset(feats, labels)
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last)
