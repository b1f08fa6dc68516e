"""Classification data: dataset descriptors, sample lists, albumentations transforms, loaders."""

from .dataset import DataError, ImageDataset, read_image
from .descriptor import DatasetInfo, load_descriptor
from .image import ImageError
from .loaders import DataBundle, build_data, list_recipe_splits
from .samples import SplitSamples, check_class_sets, list_split, list_splits
from .transforms import DataConfig, build_transforms, resolve_data_config

__all__ = [
    "DataBundle",
    "DataConfig",
    "DataError",
    "DatasetInfo",
    "ImageDataset",
    "ImageError",
    "SplitSamples",
    "build_data",
    "list_recipe_splits",
    "build_transforms",
    "check_class_sets",
    "list_split",
    "list_splits",
    "load_descriptor",
    "read_image",
    "resolve_data_config",
]
