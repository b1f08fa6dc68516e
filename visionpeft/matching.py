"""Name/type pattern matching shared by every strategy.

A pattern is one of:
  * ``re:<regex>`` - ``re.fullmatch`` against the qualified name;
  * a glob containing ``*``, ``?`` or ``[`` - ``fnmatch`` against the qualified name;
  * a module class name (``"Linear"``, ``"Conv2d"``, ``"DWConv"``) - matches modules of that class or a subclass;
  * a plain name - matches the name itself, a dotted suffix (``"qkv"`` matches ``blocks.0.attn.qkv``),
    or a dotted prefix for parameters (``"model.0"`` matches ``model.0.conv.weight``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

from torch import nn

from .errors import TargetNotFoundError, closest

_GLOB_CHARS = set("*?[")


def _is_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


def name_matches(name: str, pattern: str, *, prefix: bool = False) -> bool:
    """Whether a qualified ``name`` matches ``pattern`` (type names are not considered here)."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    if _is_glob(pattern):
        return fnmatch.fnmatchcase(name, pattern)
    if name == pattern or name.endswith("." + pattern):
        return True
    return prefix and name.startswith(pattern + ".")


def type_matches(module: nn.Module, pattern: str) -> bool:
    """Whether ``module``'s class (or a base class) is called ``pattern``."""
    return any(cls.__name__ == pattern for cls in type(module).__mro__)


def match_modules(
    model: nn.Module, patterns: Sequence[str], *, what: str, field: str
) -> dict[str, nn.Module]:
    """Modules whose name or class matches any pattern; every pattern must match something.

    Raises:
        TargetNotFoundError: a pattern matched nothing; the message lists the closest module names.
    """
    named = dict(model.named_modules())
    named.pop("", None)
    found: dict[str, nn.Module] = {}
    for pattern in patterns:
        hits = {
            n: m for n, m in named.items() if name_matches(n, pattern) or type_matches(m, pattern)
        }
        if not hits:
            _raise_not_found(pattern, named.keys(), what=what, field=field, kinds=_type_names(named.values()))
        found.update(hits)
    return dict(sorted(found.items(), key=lambda kv: list(named).index(kv[0])))


def match_parameters(
    model: nn.Module, patterns: Sequence[str], *, what: str, field: str
) -> list[str]:
    """Parameter names matching any pattern (plain names also match as module prefixes)."""
    names = [n for n, _ in model.named_parameters()]
    out: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if name_matches(n, pattern, prefix=True)]
        if not hits:
            _raise_not_found(pattern, names, what=what, field=field)
        out.extend(h for h in hits if h not in out)
    return out


def _type_names(modules: Iterable[nn.Module]) -> list[str]:
    return sorted({type(m).__name__ for m in modules})


def _raise_not_found(
    pattern: str, names: Iterable[str], *, what: str, field: str, kinds: list[str] | None = None
) -> None:
    names = list(names)
    near = closest(pattern, names) or names[:5]
    msg = f"{field}: pattern {pattern!r} matches no {what} of the model. Closest names: {near}."
    if kinds is not None:
        msg += f" Module types present: {kinds[:12]}."
    msg += " Use a dotted suffix ('qkv'), a glob ('blocks.*.mlp.fc1'), 're:<regex>' or a class name ('Conv2d')."
    raise TargetNotFoundError(msg)
