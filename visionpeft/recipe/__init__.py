"""Typed, validated recipes: YAML + ``key=value`` overrides -> a frozen pydantic object."""

from .base import FULL_BASELINE, BaseRecipe, Section
from .loader import TASK_SCHEMAS, apply_overrides, load_recipe, parse_recipe, recipe_to_dict, save_resolved

__all__ = [
    "BaseRecipe",
    "Section",
    "FULL_BASELINE",
    "TASK_SCHEMAS",
    "load_recipe",
    "parse_recipe",
    "apply_overrides",
    "save_resolved",
    "recipe_to_dict",
]
