"""The fields of a PEFT ``adapter_config.json`` that visionpeft reads, and their types: checked before any is used.

A field of the wrong type (``"r": null``, ``"lora_alpha": "x"``, ``"rank_pattern": []``, a ``rank_pattern`` key
that is no regular expression, ``"peft_type": ["LORA"]``) used to surface as a ``TypeError`` / ``ValueError`` /
``AttributeError`` / ``re.error`` traceback from wherever it was first used; here it is one line naming the file
and the field, as for visionpeft's own ``adapter.json`` (:mod:`visionpeft.adapter_fields`). Only the fields
visionpeft reads are checked; an absent field takes PEFT's default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

__all__ = ["field_problem"]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _rank(v: Any) -> bool:
    return _int(v) and v >= 1


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _fraction(v: Any) -> bool:
    return _number(v) and 0 <= v < 1


def _pattern_problem(value: Any, check: Callable[[Any], bool], what: str) -> str | None:
    if not isinstance(value, dict):
        return f"expected a mapping of module-name regex -> {what}"
    for key, v in value.items():
        try:
            re.compile(rf"(.*\.)?({key})$")
        except (re.error, TypeError) as exc:
            return f"key {key!r} is no regular expression ({exc})"
        if not check(v):
            return f"{key!r}: expected {what}, got {v!r} ({type(v).__name__})"
    return None


#: field -> (expected, check, null allowed). ``null`` means PEFT's default only where visionpeft reads it so.
_FIELDS: dict[str, tuple[str, Callable[[Any], bool], bool]] = {
    "peft_type": ("a string such as 'LORA'", lambda v: isinstance(v, str), False),
    "r": ("a positive integer", _rank, False),
    "lora_alpha": ("a finite number", _number, False),
    "alpha": ("a finite number", _number, False),
    "lora_dropout": ("a number in [0, 1)", _fraction, True),
    "rank_dropout": ("a number in [0, 1)", _fraction, True),
    "module_dropout": ("a number in [0, 1)", _fraction, True),
    "use_dora": ("true or false", lambda v: isinstance(v, bool), True),
    "use_rslora": ("true or false", lambda v: isinstance(v, bool), True),
    "decompose_both": ("true or false", lambda v: isinstance(v, bool), True),
    "decompose_factor": ("an integer (-1: PEFT's default)", _int, False),
    "modules_to_save": ("a list of module names", lambda v: isinstance(v, list) and all(
        isinstance(e, str) and e for e in v), True),
    "bias": ("a string ('none', 'all', 'lora_only')", lambda v: isinstance(v, str), True),
}


def field_problem(config: dict[str, Any]) -> str | None:
    """``"<field>: expected ..., got ..."`` for the first field of ``config`` of the wrong type, else ``None``."""
    for key, (what, check, nullable) in _FIELDS.items():
        if key not in config or (config[key] is None and nullable):
            continue
        if not check(config[key]):
            return f"{key}: expected {what}, got {config[key]!r:.80} ({type(config[key]).__name__})"
    for key, check, what in (("rank_pattern", _rank, "a positive integer"),
                             ("alpha_pattern", _number, "a finite number")):
        if config.get(key) is not None and (problem := _pattern_problem(config[key], check, what)) is not None:
            return f"{key}: {problem}"
    return None
