"""DataLoaders for a recipe: descriptor -> samples -> datasets -> (distributed) loaders."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from .dataset import ImageDataset
from .descriptor import DatasetInfo, load_descriptor
from .samples import list_splits
from .transforms import DataConfig, build_transforms

__all__ = ["DataBundle", "build_data", "list_recipe_splits", "ShardSampler", "make_loader"]


class ShardSampler(Sampler[int]):
    """Evaluation sharding without padding: rank ``r`` gets indices ``r, r + world, ...``.

    ``DistributedSampler`` pads the last shard with repeated samples, which would bias metrics.
    """

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, length, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _seed_worker(worker_id: int) -> None:
    # Each worker gets its own stream derived from the loader's seed, so augmentations differ per
    # worker but repeat across runs with the same seed.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@dataclass
class DataBundle:
    """Everything the trainer needs from the data side."""

    info: DatasetInfo
    classes: tuple[str, ...]
    data_cfg: DataConfig
    train: ImageDataset
    val: ImageDataset
    train_loader: DataLoader
    val_loader: DataLoader
    train_sampler: DistributedSampler | None
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def make_loader(dataset: ImageDataset, batch_size: int, workers: int, shuffle: bool, seed: int,
                rank: int = 0, world: int = 1, drop_last: bool = False) -> tuple[DataLoader, Any]:
    """A DataLoader (and its distributed sampler, for ``set_epoch``) for one split."""
    # Training always goes through DistributedSampler (also with one process): its order depends only
    # on (seed, epoch), so a resumed run sees exactly the batches the uninterrupted run would have.
    sampler: Any = None
    if shuffle:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    elif world > 1:
        sampler = ShardSampler(len(dataset), rank, world)
    gen = torch.Generator()
    gen.manual_seed(seed)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=workers, pin_memory=torch.cuda.is_available(), drop_last=drop_last,
        # Not persistent: workers are re-created each epoch so they see ``dataset.set_epoch``.
        persistent_workers=False, worker_init_fn=_seed_worker, generator=gen,
    )
    return loader, sampler if shuffle else None


def list_recipe_splits(recipe: Any, eval_split: str | None = None) -> tuple[DatasetInfo, dict[str, Any]]:
    """The dataset and its train + val (or ``eval_split``) sample lists, class sets checked."""
    info = load_descriptor(recipe.data)
    ds = recipe.dataset
    roles = {"train": ds.train_split, "val": eval_split or ds.val_split}
    return info, list_splits(info, roles, ds.max_per_class)


def build_data(recipe: Any, data_cfg: DataConfig, rank: int = 0, world: int = 1,
               eval_split: str | None = None, listed: tuple[DatasetInfo, dict[str, Any]] | None = None,
               eval_only: bool = False) -> DataBundle:
    """Datasets and loaders for ``recipe``: train + val (or ``eval_split`` in place of val).

    ``listed`` reuses sample lists from :func:`list_recipe_splits`; ``eval_only`` skips building the
    training dataset's loader (``visionpeft eval``).
    """
    info, splits = listed or list_recipe_splits(recipe, eval_split)
    ds = recipe.dataset
    roles = {"train": ds.train_split, "val": eval_split or ds.val_split}
    train_tf, eval_tf = build_transforms(data_cfg, recipe.augment)
    train = ImageDataset(splits["train"].samples, train_tf, ds.skip_bad_images and not eval_only,
                         roles["train"], seed=recipe.seed, check_files=not eval_only,
                         source=splits["train"].source)
    val = ImageDataset(splits["val"].samples, eval_tf, ds.skip_bad_images, roles["val"], source=splits["val"].source)
    t = recipe.train
    # Drop a ragged last batch only when it would leave a single image (BatchNorm cannot train on 1). Each
    # process gets ceil(len / world) samples (DistributedSampler pads the last shard).
    drop_last = t.batch_size > 1 and -(-len(train) // world) % t.batch_size == 1
    train_loader, sampler = make_loader(train, t.batch_size, 0 if eval_only else t.workers, True,
                                        recipe.seed, rank, world, drop_last)
    val_loader, _ = make_loader(val, t.eval_batch_size or 2 * t.batch_size, t.workers, False, recipe.seed,
                                rank, world)
    return DataBundle(info=info, classes=splits["train"].classes, data_cfg=data_cfg, train=train, val=val,
                      train_loader=train_loader, val_loader=val_loader, train_sampler=sampler,
                      skipped={roles["train"]: len(train.skipped), roles["val"]: len(val.skipped)})
