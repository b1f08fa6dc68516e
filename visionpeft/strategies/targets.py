"""Which layers a layer-wrapping method adapts, shared by ``lora``, ``dora``, ``loha``, ``lokr`` and ``ssf``.

Resolution (:func:`resolve_targets`): patterns from the config (strict: each must match a supported layer)
or the backend's defaults (only the union must); :func:`check_targets` runs it (and the other config checks)
before :func:`visionpeft.apply` changes anything. Selection (:func:`select_targets`): drop layers whose weight
lies in the one frozen region (``ctx.frozen``, every freeze form), layers an earlier strategy already trains
in full (``ctx.claims``: wrapping would freeze them), layers inside ``spec.blocks[:start_block]``, inside the
task head (default targets only), under ``exclude`` / the backend's exclude list, or whose adapter would exceed
``max_param_fraction`` of the layer; resolve per-layer rank and alpha. Every skip is reported in the notes
naming what the user wrote (``freeze.n=2``, ``lora.exclude pattern 'mlp.2'``, the backend's own exclude); an
empty result is an error that says why and what to change.
Wrapping helpers replace a module in place and carry framework tags (Ultralytics'
``.f`` / ``.i`` / ``.type``) over to the wrapper.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ..errors import ConfigError, TargetNotFoundError, closest
from ..matching import match_modules, name_matches, type_matches
from . import roles
from .base import ApplyContext, ApplyReport
from .roles import adapter_exclude

__all__ = [
    "wrap_module",
    "Target",
    "LayerTargetConfig",
    "plain_linear_or_conv",
    "resolve_targets",
    "check_targets",
    "default_patterns",
    "Skip",
    "skip_reason",
    "skip_note",
    "filter_targets",
    "select_targets",
    "nothing_left_message",
    "default_settings",
    "replace_module",
    "carry_tags",
    "wrapped_layers",
    "unwrap_layers",
]


@dataclass(frozen=True)
class Target:
    """One module that will be wrapped, with its resolved hyper-parameters."""

    name: str
    module: nn.Module
    rank: int
    alpha: float
    segments: tuple[tuple[int, int], ...] | None = None


class LayerTargetConfig(Protocol):
    """The config fields :func:`select_targets` reads (``LoRAConfig``, ``LoHaConfig``, ``LoKrConfig`` ...)."""

    method: str
    rank: int
    alpha: float | None
    targets: list[str] | None
    exclude: list[str]
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    max_param_fraction: float | None
    start_block: int


def plain_linear_or_conv(module: nn.Module) -> bool:
    """Plain Linear/Conv2d only: a subclass with its own forward (timm's Conv2dSame, StdConv2d ...) computes
    something a weight-space update cannot reproduce exactly."""
    if isinstance(module, nn.Linear):
        return type(module).forward is nn.Linear.forward
    if isinstance(module, nn.Conv2d):
        return type(module).forward is nn.Conv2d.forward and type(module)._conv_forward is nn.Conv2d._conv_forward
    return False


def _adapted(module: nn.Module) -> bool:
    from .adapter_layer import WeightAdapterLayer

    return isinstance(module, WeightAdapterLayer) or getattr(module, "is_visionpeft_wrapper", False)


def resolve_targets(
    model: nn.Module,
    patterns: list[str],
    *,
    strict: bool,
    method: str,
    supported: Callable[[nn.Module], bool] = plain_linear_or_conv,
    kinds: str = "plain nn.Linear / nn.Conv2d",
) -> tuple[dict[str, nn.Module], list[str]]:
    """Supported modules matched by ``patterns``, in model order, plus notes on what was left out.

    ``strict`` (user-given targets): every pattern must match a supported layer. Otherwise (the backend's
    defaults, e.g. ``("Linear", "Conv2d")`` on a ViT without convs) only the union must. Layers inside an
    existing adapter wrapper never match (one adapter per layer).
    """
    named = dict(model.named_modules())
    wrappers = {n: m for n, m in named.items() if _adapted(m)}
    inside = _inside(named, wrappers)
    found: dict[str, nn.Module] = {}
    notes: list[str] = []
    for pattern in patterns:
        if strict:
            hits = match_modules(model, [pattern], what="module", field=f"{method}.targets")
        else:
            hits = {n: m for n, m in named.items() if n and (name_matches(n, pattern) or type_matches(m, pattern))}
        ok = {n: m for n, m in hits.items() if supported(m) and n not in inside and n not in wrappers}
        if not ok and strict:
            raise ConfigError(_no_supported_message(method, pattern, hits, inside, wrappers, kinds))
        found.update(ok)
        for n, m in hits.items():
            if isinstance(m, nn.Linear | nn.Conv2d) and not plain_linear_or_conv(m) and n not in inside:
                note = f"skipped {n}: {type(m).__name__} has its own forward; {method} adapts {kinds} layers"
                notes += [note] if note not in notes else []
    if not found:
        raise TargetNotFoundError(
            f"{method}: the model spec's default targets {patterns} match no {kinds} layer without an adapter; "
            f"set {method}.targets to the layers to adapt"
        )
    for name in list(found):
        parent = named[name.rpartition(".")[0]]
        if isinstance(parent, nn.MultiheadAttention):
            # MultiheadAttention reads out_proj.weight directly instead of calling the module.
            notes.append(f"skipped {name}: Linear inside nn.MultiheadAttention (its weight is read directly)")
            del found[name]
    order = {n: i for i, n in enumerate(named)}
    return dict(sorted(found.items(), key=lambda kv: order[kv[0]])), notes


def _no_supported_message(
    method: str, pattern: str, hits: Mapping[str, nn.Module], inside: set[str], wrappers: Mapping[str, nn.Module],
    kinds: str,
) -> str:
    if hits and all(n in inside or n in wrappers for n in hits):
        kind = next((getattr(m, "adapter_kind", "visionpeft") for n, m in wrappers.items() if n in hits), None)
        kind = kind or next(iter({getattr(m, "adapter_kind", "visionpeft") for m in wrappers.values()}), "an")
        return (
            f"{method}.targets: pattern {pattern!r} only matches layers that already carry a {kind} adapter "
            f"({list(hits)[:5]}); adapt each layer with one method, or merge first"
        )
    types = sorted({type(m).__name__ for n, m in hits.items() if n not in inside})
    return (
        f"{method}.targets: pattern {pattern!r} matches only modules of type {types} (e.g. {list(hits)[:5]}); "
        f"{method} adapts {kinds} layers. Target the layers inside, e.g. '{next(iter(hits))}.*' or the class "
        "names 'Linear' / 'Conv2d'"
    )


def _inside(named: Mapping[str, nn.Module], roots: Iterable[str]) -> set[str]:
    """Names of modules strictly inside any of ``roots``."""
    prefixes = tuple(r + "." for r in roots if r)
    return {n for n in named if prefixes and n.startswith(prefixes)}


def under(name: str, roots: Iterable[str]) -> bool:
    """Whether ``name`` is one of ``roots`` or inside one."""
    return any(name == r or name.startswith(r + ".") for r in roots)


def excluded_roots(model: nn.Module, exclude: list[str], ctx: ApplyContext, method: str,
                   backend: bool = True) -> dict[str, tuple[str, str]]:
    """Excluded module name -> (``"exclude"`` or ``"backend_exclude"``, the pattern that excluded it).

    The user's ``<method>.exclude`` (every pattern must match) comes first; then, with ``backend``, the backend's
    ``spec.lora_exclude``.
    """
    roots: dict[str, tuple[str, str]] = {}
    for pattern in exclude:
        for name in match_modules(model, [pattern], what="module", field=f"{method}.exclude"):
            roots.setdefault(name, ("exclude", pattern))
    if not backend:
        return roots
    for name, module in model.named_modules():
        for pattern in adapter_exclude(model, ctx.spec):
            if name and (name_matches(name, pattern) or type_matches(module, pattern)):
                roots.setdefault(name, ("backend_exclude", pattern))
    return roots


def start_block_roots(start_block: int, ctx: ApplyContext, method: str) -> tuple[str, ...]:
    """``spec.blocks[:start_block]``, or a clear error when there are fewer blocks."""
    blocks = ctx.spec.blocks
    if start_block > len(blocks):
        raise ConfigError(
            f"{method}.start_block: {start_block} is larger than the number of blocks the model spec lists "
            f"({len(blocks)}{': ' + ', '.join(blocks[:3]) + ' ...' if blocks else ''}); use 0..{len(blocks)}"
        )
    return blocks[:start_block]


def check_targets(model: nn.Module, cfg: LayerTargetConfig, ctx: ApplyContext, **resolve: object) -> None:
    """Validate a target-based config against ``model`` without changing it: targets resolve, every
    ``rank_pattern`` / ``alpha_pattern`` / ``exclude`` pattern matches, ``start_block`` is in range.

    ``resolve`` is passed on to :func:`resolve_targets` (``supported`` / ``kinds``). Fields a config lacks
    (SSF has no rank) are skipped. What depends on earlier strategies (the frozen region, claims) is decided
    at apply time.
    """
    method = cfg.method
    patterns = list(cfg.targets) if cfg.targets is not None else list(default_patterns(model, cfg, ctx))
    candidates, _ = resolve_targets(model, patterns, strict=cfg.targets is not None, method=method,
                                    **resolve)  # type: ignore[arg-type]
    for field in ("rank_pattern", "alpha_pattern"):
        _check_patterns_used(getattr(cfg, field, {}), candidates, f"{method}.{field}", method)
    excluded_roots(model, list(getattr(cfg, "exclude", [])), ctx, method, getattr(cfg, "default_exclude", True))
    start_block_roots(getattr(cfg, "start_block", 0), ctx, method)


def default_patterns(model: nn.Module, cfg: LayerTargetConfig, ctx: ApplyContext) -> tuple[str, ...]:
    """The default target patterns for ``cfg.method``, derived from the spec's roles
    (:mod:`~visionpeft.strategies.roles`): SSF's placement for SSF, else the adapter targets."""
    return roles.ssf_targets(model, ctx.spec) if cfg.method == "ssf" else roles.adapter_targets(model, ctx.spec)


# ---------------------------------------------------------------- filtering and per-layer settings


@dataclass(frozen=True)
class Skip:
    """Why one candidate layer gets no adapter: ``reason`` (a key of ``_HINTS``) and what the user wrote."""

    reason: str
    detail: str


#: Per reason, the note for one skipped layer; ``{m}`` is the method, ``{d}`` the detail the user wrote.
_NOTES = {
    "frozen": "its weight lies in the frozen region ({d})",
    "claimed": "its weight already trains in full (made trainable by {d!r})",
    "start_block": "inside spec.blocks[:start_block] ({m}.start_block={d})",
    "head": "task head (spec.head); the 'head' strategy trains it in full",
    "head_backend": "task head (spec.head), which the {d} backend leaves to the 'head' strategy (spec.lora_exclude)",
    "exclude": "excluded by {m}.exclude pattern {d!r}",
    "backend_exclude": "excluded by the backend's default spec.lora_exclude pattern {d!r}",
    "max_param_fraction": "adapter larger than {m}.max_param_fraction={d} of the layer",
}
#: Per reason, what to change.
_HINTS = {
    "frozen": "{d} covers them: freeze fewer parameters",
    "claimed": "{d!r} already trains them in full: drop it, or let {m} adapt other layers",
    "start_block": "lower {m}.start_block (now {d})",
    "head": "name head layers in {m}.targets explicitly, or train the head with the 'head' strategy",
    "head_backend": (
        "train the head with the 'head' strategy; to adapt it with {m} anyway, pass visionpeft.apply(..., "
        "spec=...) with a ModelSpec whose lora_exclude leaves it out ({d} backend)"
    ),
    "exclude": "loosen {m}.exclude (pattern {d!r})",
    "backend_exclude": (
        "these layers are never adapted by default (pattern {d!r}); pass visionpeft.apply(..., spec=...) with a "
        "ModelSpec whose lora_exclude leaves them out"
    ),
    "max_param_fraction": "raise {m}.max_param_fraction (now {d}) or set it to null, or lower {m}.rank",
}


def skip_note(skip: Skip, method: str) -> str:
    """The note for one layer skipped for ``skip``."""
    return _NOTES[skip.reason].format(m=method, d=skip.detail)


def weight_count(module: nn.Module) -> int:
    """Number of weight entries of a Linear/Conv2d (the bias is not counted)."""
    return module.weight.numel()  # type: ignore[union-attr]


def _frozen_cause(module: nn.Module, ctx: ApplyContext) -> str | None:
    """A layer with a weight: the weight's cause; a larger module (an MLP): the cause when it lies in the
    region entirely."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, nn.Parameter):
        return ctx.frozen.cause(weight)
    return ctx.frozen.module_cause(module)


def skip_reason(
    name: str, module: nn.Module, ctx: ApplyContext, *, explicit: bool, wraps: bool,
    excluded: Mapping[str, tuple[str, str]], early: tuple[str, ...], start_block: int,
) -> Skip | None:
    """The first rule that keeps ``name`` from an adapter (cost aside), or ``None``.

    ``wraps``: the method freezes the layer's own parameters (a wrapper), so a layer an earlier strategy
    claimed (trains in full) is skipped rather than silently frozen; parallel adapters leave it alone.
    """
    cause = _frozen_cause(module, ctx)
    if cause is not None:
        return Skip("frozen", cause)
    weight = getattr(module, "weight", None)
    owner = ctx.claims.owner(weight) if wraps and isinstance(weight, nn.Parameter) else None
    if owner is not None:
        return Skip("claimed", owner)
    if under(name, early):
        return Skip("start_block", str(start_block))
    root = next((r for r in _ancestors(name) if r in excluded), None)
    if under(name, ctx.spec.head) and (not explicit or (root is not None and excluded[root][0] == "backend_exclude")):
        # Default targets leave the head to the 'head' strategy; explicit targets may reach into it unless
        # the backend excludes those layers (a classifier re-initialised for the dataset's classes).
        return Skip("head" if not explicit else "head_backend", ctx.spec.backend)
    if root is not None:
        return Skip(*excluded[root])
    return None


def _ancestors(name: str) -> list[str]:
    """``a.b.c`` -> ``["a.b.c", "a.b", "a"]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def filter_targets(
    model: nn.Module,
    candidates: dict[str, nn.Module],
    ctx: ApplyContext,
    notes: list[str],
    *,
    method: str,
    explicit: bool,
    exclude: list[str],
    start_block: int,
    wraps: bool = True,
    default_exclude: bool = True,
) -> tuple[dict[str, nn.Module], dict[Skip, int]]:
    """Drop candidates in the frozen region, claimed by an earlier strategy (``wraps``), inside
    ``spec.blocks[:start_block]``, the task head (unless the user named the targets: ``explicit``) or an
    excluded module (``exclude``, and the backend's ``spec.lora_exclude`` unless ``default_exclude`` is false).
    Returns the kept modules and skip counts by reason; every skip is noted."""
    excluded = excluded_roots(model, exclude, ctx, method, default_exclude)
    early = start_block_roots(start_block, ctx, method)
    skipped: dict[Skip, int] = {}
    kept: dict[str, nn.Module] = {}
    for name, module in candidates.items():
        skip = skip_reason(name, module, ctx, explicit=explicit, wraps=wraps, excluded=excluded, early=early,
                           start_block=start_block)
        if skip is None:
            kept[name] = module
            continue
        skipped[skip] = skipped.get(skip, 0) + 1
        notes.append(f"skipped {name}: {skip_note(skip, method)}")
    return kept, skipped


def select_targets(
    model: nn.Module,
    candidates: dict[str, nn.Module],
    cfg: LayerTargetConfig,
    ctx: ApplyContext,
    notes: list[str],
    *,
    cost: Callable[[Target], int],
    settings: Callable[[str, nn.Module, LayerTargetConfig], Target] | None = None,
) -> list[Target]:
    """:func:`filter_targets`, then resolve rank and alpha (``settings``) and drop too-expensive layers.

    Args:
        cost: adapter parameters of one target, compared with ``max_param_fraction`` of its weight count.
        settings: per-layer hyper-parameters; :func:`default_settings` (rank/alpha patterns) when ``None``.

    Raises:
        ConfigError: every candidate was skipped (naming each reason as the user wrote it and the fix).
    """
    method = cfg.method
    settings = settings or default_settings
    _check_patterns_used(cfg.rank_pattern, candidates, f"{method}.rank_pattern", method)
    _check_patterns_used(cfg.alpha_pattern, candidates, f"{method}.alpha_pattern", method)
    kept, skipped = filter_targets(
        model, candidates, ctx, notes, method=method, explicit=cfg.targets is not None, exclude=cfg.exclude,
        start_block=cfg.start_block, default_exclude=getattr(cfg, "default_exclude", True),
    )
    out: list[Target] = []
    for name, module in kept.items():
        target = settings(name, module, cfg)
        n = cost(target)
        limit = None if cfg.max_param_fraction is None else cfg.max_param_fraction * weight_count(module)
        if limit is None or n <= limit:
            out.append(target)
            continue
        skip = Skip("max_param_fraction", str(cfg.max_param_fraction))
        skipped[skip] = skipped.get(skip, 0) + 1
        notes.append(
            f"skipped {name}: adapter of rank {target.rank} would add {n} parameters, more than "
            f"max_param_fraction={cfg.max_param_fraction} of the layer's {weight_count(module)} weights"
        )
    if not out:
        raise ConfigError(nothing_left_message(method, candidates, skipped))
    return out


def default_settings(name: str, module: nn.Module, cfg: LayerTargetConfig, rank: int | None = None) -> Target:
    """Rank and alpha of one layer: the first matching ``rank_pattern`` / ``alpha_pattern`` entry, else the
    config's values; ``alpha=None`` means ``alpha = rank`` (scale 1 whatever the per-layer rank). ``rank``
    (a rank a budget chose) overrides the rank lookup."""
    rank = _lookup(name, module, cfg.rank_pattern, cfg.rank) if rank is None else rank
    alpha = _lookup(name, module, cfg.alpha_pattern, cfg.alpha)
    return Target(name, module, int(rank), float(rank if alpha is None else alpha))  # type: ignore[arg-type]


def _lookup(name: str, module: nn.Module, patterns: Mapping[str, float], default: float | None) -> float | None:
    for pattern, value in patterns.items():
        if name_matches(name, pattern) or type_matches(module, pattern):
            return value
    return default


def _check_patterns_used(
    patterns: Mapping[str, object], candidates: Mapping[str, nn.Module], field: str, method: str
) -> None:
    for pattern in patterns:
        if not any(name_matches(n, pattern) or type_matches(m, pattern) for n, m in candidates.items()):
            near = closest(pattern, candidates) or list(candidates)[:5]
            raise ConfigError(
                f"{field}: pattern {pattern!r} matches none of the {method} target layers. Closest: {near}"
            )


def nothing_left_message(method: str, candidates: Mapping[str, nn.Module], skipped: Mapping[Skip, int]) -> str:
    """One line: every candidate was skipped, why (as the user wrote it) and what to change."""
    why = "; ".join(f"{n} layer{'s' if n > 1 else ''}: {skip_note(skip, method)}" for skip, n in skipped.items())
    fixes = "; ".join(dict.fromkeys(_HINTS[skip.reason].format(m=method, d=skip.detail) for skip in skipped))
    return (
        f"{method}: all {len(candidates)} target layers were skipped ({why}), so {method} would add nothing. "
        f"To fix: {fixes}."
    )


# ---------------------------------------------------------------- wrapping


@functools.cache
def _standard_keys() -> frozenset[str]:
    """Instance attributes torch's own layers set (``in_features``, ``stride``, ``eps`` ...), computed once."""
    # Built on the meta device: a module built on the CPU would draw from torch's global random generator.
    with torch.device("meta"):
        mods = (nn.Linear(1, 1), nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1), nn.LayerNorm(1), nn.GroupNorm(1, 1))
    return frozenset(k for m in mods for k in vars(m))


def carry_tags(wrapper: nn.Module, original: nn.Module) -> None:
    """Copy plain attributes frameworks put on layers (Ultralytics: ``.f``, ``.i``, ``.type`` on every
    top-level layer of a DetectionModel, read while routing tensors) onto ``wrapper``.

    Instance attributes only, never torch's own layer attributes, private ones, or names the wrapper already
    has: Ultralytics' ``.type`` shadows ``nn.Module.type`` on the original layer too.
    """
    standard = _standard_keys()
    own = vars(wrapper)
    for key, value in vars(original).items():
        if key in standard or key.startswith("_") or key in own:
            continue
        if not isinstance(getattr(type(wrapper), key, None), property) and key not in wrapper._modules:
            setattr(wrapper, key, value)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` is."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def wrap_module(model: nn.Module, name: str, original: nn.Module, wrapper: nn.Module,
                report: ApplyReport, trainable: Iterable[str]) -> None:
    """Replace ``original`` (at ``name``) by ``wrapper``, carrying its framework tags, and record in ``report``
    the module and the wrapper's trainable tensors ``trainable`` (names relative to the wrapper)."""
    carry_tags(wrapper, original)
    replace_module(model, name, wrapper)
    report.modules.append(name)
    report.trainable += [f"{name}.{p}" for p in trainable]


def wrapped_layers(model: nn.Module, cls: type[nn.Module]) -> dict[str, nn.Module]:
    """Every module of type ``cls`` in ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, cls)}


def unwrap_layers(model: nn.Module, cls: type[nn.Module]) -> int:
    """Replace every ``cls`` wrapper by its ``to_base()`` (the plain layer with the update folded in).

    Returns how many layers were replaced.
    """
    layers = wrapped_layers(model, cls)
    for name, layer in layers.items():
        replace_module(model, name, layer.to_base())  # type: ignore[operator]
    return len(layers)
