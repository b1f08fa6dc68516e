"""Strategy registry: ``{"method": "lora", ...}`` mappings <-> typed configs <-> strategy objects.

Adding a method touches two places: its module (config + strategy class) and ``_BUILTIN`` below.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError, closest
from ..safe_yaml import brief
from .base import Strategy, StrategyConfig

_REGISTRY: dict[str, type[Strategy]] = {}
_BUILTIN = (
    "visionpeft.strategies.freeze",
    "visionpeft.strategies.simple",
    "visionpeft.strategies.lora.strategy",
    "visionpeft.strategies.vpt",
    "visionpeft.strategies.dora",
    "visionpeft.strategies.loha",
    "visionpeft.strategies.lokr",
    "visionpeft.strategies.ssf",
    "visionpeft.strategies.adaptformer",
)


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available under ``cls.method``.

    Raises:
        ConfigError: another class is already registered under that name (built-in methods included:
            a plug-in strategy must choose a new ``method``; registering the same class again is a no-op).
    """
    if cls.__module__ not in _BUILTIN:
        _load_builtins()  # a plug-in named like a built-in clashes now, not at the first parse
    existing = _REGISTRY.get(cls.method)
    if existing is not None and existing is not cls and _qualname(existing) != _qualname(cls):
        raise ConfigError(
            f"register: strategy method {cls.method!r} is already registered by {_qualname(existing)}; "
            f"give {_qualname(cls)} another method name"
        )
    _REGISTRY[cls.method] = cls
    return cls


def _qualname(cls: type) -> str:
    # The same class re-created by importlib.reload keeps its qualified name: that is not a clash.
    return f"{cls.__module__}.{cls.__qualname__}"


def _load_builtins() -> None:
    import importlib

    for mod in _BUILTIN:
        importlib.import_module(mod)


def available() -> list[str]:
    """Names of all registered methods."""
    _load_builtins()
    return sorted(_REGISTRY)


def strategy_class(method: str) -> type[Strategy]:
    """The :class:`Strategy` class registered as ``method`` (``ConfigError`` with a "did you mean")."""
    _load_builtins()
    if method not in _REGISTRY:
        hint = closest(method, _REGISTRY)
        raise ConfigError(
            f"unknown strategy method {brief(method)}; available: {sorted(_REGISTRY)}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    return _REGISTRY[method]


def config_class(method: str) -> type[StrategyConfig]:
    """The typed config class of ``method``."""
    return strategy_class(method).config_cls


def parse_config(entry: Mapping[str, Any] | StrategyConfig, where: str = "strategies") -> StrategyConfig:
    """Validate one strategy entry (a mapping with a ``method`` key, or a config object)."""
    if isinstance(entry, StrategyConfig):
        return entry
    if not isinstance(entry, Mapping) or "method" not in entry:
        raise ConfigError(
            f"{where}: expected a mapping with a 'method' key, e.g. {{'method': 'lora', 'rank': 8}}; "
            f"got {brief(entry)}"
        )
    if not isinstance(entry["method"], str):
        raise ConfigError(f"{where}.method: expected a method name such as 'lora', got {brief(entry['method'])}")
    cls = config_class(entry["method"])
    try:
        return cls.model_validate(dict(entry))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where, cls)) from None


def format_validation_error(exc: ValidationError, where: str, cls: type | None = None) -> str:
    """One readable line per problem: ``field.path: message`` plus a 'did you mean' for unknown keys."""
    fields = list(getattr(cls, "model_fields", {}) or {})
    lines = []
    for err in exc.errors():
        path = ".".join([where, *[str(p) for p in err["loc"]]])
        msg = err["msg"]
        if err["type"] == "extra_forbidden" and fields:
            hint = closest(str(err["loc"][-1]), fields, n=1)
            msg = "unknown key" + (f"; did you mean {hint[0]!r}?" if hint else f"; valid keys: {fields}")
        elif "input" in err and err["type"] != "missing" and (err["type"] != "value_error" or err["loc"]):
            # A model-level check (no field path) names the fields itself; echoing the whole entry adds noise.
            msg += f" (got {brief(err['input'])})"
        lines.append(f"{path}: {msg.removeprefix('Value error, ')}")
    return "; ".join(lines)


def build(entries: Iterable[Mapping[str, Any] | StrategyConfig]) -> list[Strategy]:
    """Turn strategy entries into strategy objects, in order."""
    out = []
    for i, entry in enumerate(entries):
        cfg = parse_config(entry, where=f"strategies.{i}")
        out.append(_REGISTRY[cfg.method](cfg))
    return out
