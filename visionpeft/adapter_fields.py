"""The fields of ``adapter.json`` and their types: every field is checked before any is used.

A field of the wrong type (``"format_version": "1"``, ``"strategies": {}``, ``"base": {"sha256": 3}``) used to
surface as a ``TypeError`` / ``KeyError`` traceback from wherever it was first used; here it is one line naming
the field (``adapter.json: format_version: expected an integer, got '1' (str)``). ``FIELDS`` is the one table:
path, expected kind, whether the file must have it. Types are checked, not values (the format and the version
are checked by :func:`visionpeft.adapter_io.read_adapter_config`; tensors, identity and fingerprint by
``load_adapter``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .safe_yaml import brief

__all__ = ["FIELDS", "check_adapter_fields"]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _str_or_none(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _mapping(v: Any) -> bool:
    return isinstance(v, dict)


def _list_of_mappings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(e, dict) for e in v)


def _str_to_str(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def _list_of_str(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(e, str) for e in v)


#: kind name -> check (the name is what the error message says was expected)
_KINDS: dict[str, Callable[[Any], bool]] = {
    "an integer": _int, "a string": _str, "a string or null": _str_or_none, "a mapping": _mapping,
    "a list of mappings": _list_of_mappings, "a mapping of strings to strings": _str_to_str,
    "a list of strings": _list_of_str,
}

#: (dotted path, expected kind, required). A parent that is absent skips its children.
FIELDS: tuple[tuple[str, str, bool], ...] = (
    ("format", "a string", True),
    ("format_version", "an integer", False),
    ("strategies", "a list of mappings", True),
    ("base", "a mapping", True),
    ("base.backend", "a string or null", False),
    ("base.name", "a string or null", False),
    ("base.sha256", "a string", True),
    ("base.num_tensors", "an integer", False),
    ("base.tensors", "a mapping of strings to strings", False),
    ("base.structure", "a mapping", False),
    ("base.structure.sha256", "a string", True),
    ("base.structure.modules", "a mapping of strings to strings", True),
    ("plan", "a mapping", False),
    ("plan.resolved", "a list of mappings", False),
    ("adapter_bytes", "an integer", False),
    ("versions", "a mapping of strings to strings", False),
    ("extra", "a mapping", False),
    ("extra.num_classes", "an integer", False),
    ("extra.classes", "a list of strings", False),
)


def _lookup(meta: dict[str, Any], path: str) -> tuple[bool, bool, Any]:
    """``(parent present, field present, value)`` for a dotted ``path``."""
    node: Any = meta
    *parents, leaf = path.split(".")
    for key in parents:
        if not isinstance(node, dict) or key not in node:
            return False, False, None
        node = node[key]
    if not isinstance(node, dict):
        return False, False, None
    return True, leaf in node, node.get(leaf)


def check_adapter_fields(meta: dict[str, Any], path: Path) -> None:
    """Raise :class:`ConfigError` naming the first field of ``meta`` (read from ``path``) of the wrong type."""
    for field, kind, required in FIELDS:
        parent, present, value = _lookup(meta, field)
        if not parent:
            continue
        if not present:
            if required:
                raise ConfigError(f"{path}: {field}: missing (expected {kind}); the file is incomplete or edited: "
                                  "re-save the adapter")
            continue
        if not _KINDS[kind](value):
            raise ConfigError(f"{path}: {field}: expected {kind}, got {brief(value)} ({type(value).__name__}); the "
                              "file was edited or written by something else: re-save the adapter")
