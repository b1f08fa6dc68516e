"""Booleans are not numbers: ``rank: true``, ``optim.lr: yes``, ``train.epochs: on`` are refused, naming the field.

pydantic's lax mode turns ``True`` into ``1`` (and ``1.0``) for an ``int`` / ``float`` field, so a YAML boolean
written where a number belongs (``lr: true`` from a mistyped override, ``n: yes``) trained silently with rate 1.0,
rank 1, one epoch. Recipe sections and strategy configs call :func:`refuse_bool_numbers` before validation; fields
whose type is not a number (``name``, a string made from any scalar) or admits a boolean (``bool``, unions
containing ``bool``) are left alone.
"""

from __future__ import annotations

import types
import typing
from typing import Any

__all__ = ["refuse_bool_numbers"]

_YAML_BOOL_WORDS = {"on", "off", "yes", "no", "true", "false"}


def _admits_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any or annotation is object:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_admits_bool(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:  # a boolean, or a word YAML 1.1 reads as one (amp: off), which the field maps
        return any(isinstance(a, bool) or str(a).lower() in _YAML_BOOL_WORDS for a in typing.get_args(annotation))
    return False


def _bare(annotation: Any) -> Any:
    """``float`` for ``Annotated[float, Gt(0)]`` (constrained fields), else ``annotation``."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


def _numeric(annotation: Any) -> bool:
    """Whether pydantic would turn a boolean into a number for this type (``int``, ``float``, unions of them)."""
    annotation = _bare(annotation)
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_bare(a) in (int, float) for a in typing.get_args(annotation))
    return False


def refuse_bool_numbers(model: Any, data: Any) -> Any:
    """``data`` unchanged, or ``ValueError`` naming the first field given a boolean that its type does not admit."""
    if not isinstance(data, dict):
        return data
    for name, info in model.model_fields.items():
        value = data.get(info.alias or name, data.get(name))
        if isinstance(value, bool) and _numeric(info.annotation) and not _admits_bool(info.annotation):
            raise ValueError(f"{name}: expected a number, got {str(value).lower()} (a boolean; YAML reads "
                             "true/false/yes/no/on/off as booleans)")
    return data
