"""The ``lora`` strategy: wrap selected ``nn.Linear`` / ``nn.Conv2d`` modules with low-rank adapters."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt
from torch import nn

from ...errors import ConfigError, TargetNotFoundError, closest
from ...matching import match_modules, name_matches, type_matches
from ..base import ApplyContext, ApplyReport, Strategy, StrategyConfig
from ..registry import register
from .layers import LoRAConv2d, LoRALayer, LoRALinear, adapter_param_count, base_weight_count

__all__ = ["LoRAConfig", "LoRAStrategy", "lora_layers", "merge_in_place", "unmerge", "merge_lora"]


class LoRAConfig(StrategyConfig):
    """Low-rank adapters on Linear and Conv2d layers (Hu et al., 2021), mergeable into plain weights.

    Args:
        rank: width of each update. 4-16 covers most uses; raise it when the adapted model underfits a task
            far from pretraining, lower it when adapter size matters.
        alpha: strength; the update is scaled by ``alpha / rank``. ``None`` means ``alpha = rank`` (scale 1),
            which keeps the learning rate meaningful when you change the rank. Raise it to make adapters
            learn faster without changing the optimizer.
        dropout: dropout on the LoRA input only. Use 0.05-0.1 on small data sets that overfit.
        targets: which modules to adapt (patterns as in :mod:`visionpeft.matching`: class names such as
            ``"Linear"``/``"Conv2d"``, dotted suffixes such as ``"qkv"``, globs, ``"re:<regex>"``). ``None``
            uses the backend's defaults (``spec.lora_targets``). Narrow it (e.g. ``["qkv", "proj"]``) to
            spend fewer parameters.
        exclude: patterns never adapted, added to the backend's ``spec.lora_exclude``; with default ``targets``
            the task head is excluded too (the ``head`` strategy trains it in full), explicit ``targets`` may
            reach into it. A module inside an excluded module is excluded.
        rank_pattern: per-layer rank overrides, ``{pattern: rank}``; the first matching pattern wins. Use it
            to give late blocks more capacity than early ones.
        alpha_pattern: per-layer alpha overrides, ``{pattern: alpha}``; the first matching pattern wins.
        use_rslora: scale by ``alpha / sqrt(rank)`` (rsLoRA). Turn on for ranks of 32 and more, where
            ``alpha / rank`` makes the update learn too slowly.
        qkv: ``"all"`` adapts a fused ``qkv`` projection as one matrix; ``"qv"`` adapts only its q and v
            thirds (the original LoRA paper's choice) for Linear layers named ``*qkv`` with ``out = 3 * in``.
        max_param_fraction: skip a layer whose adapter would have more parameters than this fraction of the
            layer's weight (depthwise convs, where conv LoRA costs ``rank * (k*k + 1)`` per channel against
            ``k*k`` for the layer). ``None`` adapts every target regardless of cost.
        start_block: no adapters inside ``spec.blocks[:start_block]`` ("LoRA + partial freeze"): early blocks
            compute generic features and a frozen prefix needs no backward pass. Combine with ``freeze``
            for the same effect with BatchNorm handling.
        loraplus_lr_ratio: LoRA+ (Hayou et al., 2024): ``lora_B`` learns at ``ratio`` times this strategy's
            learning rate (``lora_A`` at the rate itself). The paper recommends about 16; it speeds up
            learning of wide layers. ``None`` (default) gives A and B the same rate.
    """

    method: Literal["lora"] = "lora"
    rank: PositiveInt = 8
    alpha: PositiveFloat | None = None
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[str] | None = Field(None, min_length=1)
    exclude: list[str] = Field(default_factory=list)
    rank_pattern: dict[str, PositiveInt] = Field(default_factory=dict)
    alpha_pattern: dict[str, PositiveFloat] = Field(default_factory=dict)
    use_rslora: bool = False
    qkv: Literal["all", "qv"] = "all"
    max_param_fraction: PositiveFloat | None = 1.0
    start_block: int = Field(0, ge=0)
    loraplus_lr_ratio: PositiveFloat | None = None

    def label(self) -> str:
        """``lora r8``, plus the alpha when it is not the rank, ``qv`` and a ``start_block`` when set."""
        parts = [f"lora r{self.rank}"]
        if self.alpha is not None and self.alpha != self.rank:
            parts.append(f"a{self.alpha:g}")
        if self.use_rslora:
            parts.append("rs")
        if self.qkv == "qv":
            parts.append("qv")
        if self.start_block:
            parts.append(f"from block {self.start_block}")
        return " ".join(parts)


@dataclass(frozen=True)
class _Target:
    """One module that will be wrapped, with its resolved hyper-parameters."""

    name: str
    module: nn.Module
    rank: int
    alpha: float
    segments: tuple[tuple[int, int], ...] | None


@register
class LoRAStrategy(Strategy):
    """Wrap the selected Linear/Conv2d modules with :class:`LoRALinear` / :class:`LoRAConv2d`."""

    method = "lora"
    config_cls = LoRAConfig
    config: LoRAConfig

    def check(self, model: nn.Module, ctx: ApplyContext) -> None:
        cfg = self.config
        patterns = list(cfg.targets) if cfg.targets is not None else list(ctx.spec.lora_targets)
        candidates, _ = _resolve_targets(model, patterns, strict=cfg.targets is not None)
        _check_patterns_used(cfg.rank_pattern, candidates, "lora.rank_pattern")
        _check_patterns_used(cfg.alpha_pattern, candidates, "lora.alpha_pattern")
        _excluded_roots(model, cfg, ctx)
        _start_block_roots(cfg, ctx)

    def apply(self, model: nn.Module, ctx: ApplyContext) -> ApplyReport:
        cfg = self.config
        patterns = list(cfg.targets) if cfg.targets is not None else list(ctx.spec.lora_targets)
        candidates, notes = _resolve_targets(model, patterns, strict=cfg.targets is not None)
        targets = _select(model, candidates, cfg, ctx, notes)
        report = ApplyReport(notes=notes)
        for t in targets:
            _replace(model, t.name, _wrap(t, cfg))
            report.modules.append(t.name)
            report.trainable += [f"{t.name}.lora_A", f"{t.name}.lora_B"]
        if cfg.qkv == "qv" and not any(t.segments for t in targets):
            notes.append("qkv='qv': no fused '*qkv' Linear with out = 3 * in among the targets; nothing split")
        return report

    def merge(self, model: nn.Module) -> None:
        merge_lora(model)


# ---------------------------------------------------------------- target resolution


def _supported(module: nn.Module) -> bool:
    """Plain Linear/Conv2d only: a subclass with its own forward (timm's Conv2dSame, StdConv2d ...) computes
    something a weight-space update cannot reproduce exactly."""
    if isinstance(module, nn.Linear):
        return type(module).forward is nn.Linear.forward
    if isinstance(module, nn.Conv2d):
        return type(module).forward is nn.Conv2d.forward and type(module)._conv_forward is nn.Conv2d._conv_forward
    return False


def _resolve_targets(model: nn.Module, patterns: list[str], *, strict: bool) -> tuple[dict[str, nn.Module], list[str]]:
    """Supported modules matched by ``patterns``, in model order, plus notes on what was left out.

    ``strict`` (user-given targets): every pattern must match a plain Linear/Conv2d. Otherwise (the
    backend's defaults, e.g. ``("Linear", "Conv2d")`` on a ViT without convs) only the union must.
    """
    named = dict(model.named_modules())
    inside_lora = _inside(named, [n for n, m in named.items() if isinstance(m, LoRALayer)])
    found: dict[str, nn.Module] = {}
    notes: list[str] = []
    for pattern in patterns:
        if strict:
            hits = match_modules(model, [pattern], what="module", field="lora.targets")
        else:
            hits = {n: m for n, m in named.items() if n and (name_matches(n, pattern) or type_matches(m, pattern))}
        ok = {n: m for n, m in hits.items() if _supported(m) and n not in inside_lora}
        if not ok and strict:
            raise ConfigError(_no_supported_message(pattern, hits, inside_lora))
        found.update(ok)
        for n, m in hits.items():
            if isinstance(m, nn.Linear | nn.Conv2d) and not _supported(m) and n not in inside_lora:
                note = f"skipped {n}: {type(m).__name__} has its own forward; LoRA adapts plain Linear/Conv2d"
                notes += [note] if note not in notes else []
    if not found:
        raise TargetNotFoundError(
            f"lora: the model spec's default targets {patterns} match no plain nn.Linear / nn.Conv2d layer "
            "without a LoRA adapter; set lora.targets to the layers to adapt"
        )
    for name in list(found):
        parent = named[name.rpartition(".")[0]]
        if isinstance(parent, nn.MultiheadAttention):
            # MultiheadAttention reads out_proj.weight directly instead of calling the module.
            notes.append(f"skipped {name}: Linear inside nn.MultiheadAttention (its weight is read directly)")
            del found[name]
    order = {n: i for i, n in enumerate(named)}
    return dict(sorted(found.items(), key=lambda kv: order[kv[0]])), notes


def _no_supported_message(pattern: str, hits: Mapping[str, nn.Module], inside_lora: set[str]) -> str:
    if hits and all(n in inside_lora or isinstance(m, LoRALayer) for n, m in hits.items()):
        return (
            f"lora.targets: pattern {pattern!r} only matches layers that already carry a LoRA adapter "
            f"({list(hits)[:5]}); apply 'lora' once, or merge first"
        )
    kinds = sorted({type(m).__name__ for n, m in hits.items() if n not in inside_lora})
    return (
        f"lora.targets: pattern {pattern!r} matches only modules of type {kinds} (e.g. {list(hits)[:5]}); "
        "LoRA adapts plain nn.Linear and nn.Conv2d layers. Target the layers inside, e.g. "
        f"'{next(iter(hits))}.*' or the class names 'Linear' / 'Conv2d'"
    )


def _inside(named: Mapping[str, nn.Module], roots: Iterable[str]) -> set[str]:
    """Names of modules strictly inside any of ``roots``."""
    prefixes = tuple(r + "." for r in roots if r)
    return {n for n in named if prefixes and n.startswith(prefixes)}


def _under(name: str, roots: Iterable[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def _excluded_roots(model: nn.Module, cfg: LoRAConfig, ctx: ApplyContext) -> dict[str, tuple[str, str]]:
    """Excluded module name -> (``"exclude"`` or ``"backend_exclude"``, the pattern that excluded it).

    The user's ``lora.exclude`` (every pattern must match) comes first; then the backend's
    ``spec.lora_exclude``.
    """
    roots: dict[str, tuple[str, str]] = {}
    for pattern in cfg.exclude:
        for name in match_modules(model, [pattern], what="module", field="lora.exclude"):
            roots.setdefault(name, ("exclude", pattern))
    for name, module in model.named_modules():
        for pattern in ctx.spec.lora_exclude:
            if name and (name_matches(name, pattern) or type_matches(module, pattern)):
                roots.setdefault(name, ("backend_exclude", pattern))
    return roots


def _start_block_roots(cfg: LoRAConfig, ctx: ApplyContext) -> tuple[str, ...]:
    blocks = ctx.spec.blocks
    if cfg.start_block > len(blocks):
        raise ConfigError(
            f"lora.start_block: {cfg.start_block} is larger than the number of blocks the model spec lists "
            f"({len(blocks)}{': ' + ', '.join(blocks[:3]) + ' ...' if blocks else ''}); use 0..{len(blocks)}"
        )
    return blocks[: cfg.start_block]


# ---------------------------------------------------------------- filtering and per-layer settings


@dataclass(frozen=True)
class _Skip:
    """Why one candidate layer gets no adapter: ``reason`` (a key of ``_HINTS``) and what the user wrote."""

    reason: str
    detail: str


def _skip_reason(name: str, module: nn.Module, cfg: LoRAConfig, ctx: ApplyContext,
                 excluded: Mapping[str, tuple[str, str]], early: tuple[str, ...]) -> _Skip | None:
    """The first rule that keeps ``name`` from an adapter (cost aside), or ``None``."""
    weight = module.weight
    cause = ctx.frozen.cause(weight)
    if cause is not None:
        return _Skip("frozen", cause)
    owner = ctx.claims.owner(weight)
    if owner is not None:
        return _Skip("claimed", owner)
    if _under(name, early):
        return _Skip("start_block", str(cfg.start_block))
    root = next((r for r in _ancestors(name) if r in excluded), None)
    in_head = _under(name, ctx.spec.head)
    if in_head and (cfg.targets is None or (root is not None and excluded[root][0] == "backend_exclude")):
        # Default targets leave the head to the 'head' strategy; explicit targets may reach into it unless
        # the backend excludes those layers (a classifier re-initialised for the dataset's classes).
        return _Skip("head" if cfg.targets is None else "head_backend", ctx.spec.backend)
    if root is not None:
        return _Skip(*excluded[root])
    return None


def _ancestors(name: str) -> list[str]:
    """``a.b.c`` -> ``["a.b.c", "a.b", "a"]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


_NOTES = {
    "frozen": "its weight lies in the frozen region ({})",
    "claimed": "its weight already trains in full (made trainable by {!r})",
    "start_block": "inside spec.blocks[:start_block] (lora.start_block={})",
    "head": "task head (spec.head); the 'head' strategy trains it in full",
    "head_backend": "task head (spec.head), which the {} backend leaves to the 'head' strategy (spec.lora_exclude)",
    "exclude": "excluded by lora.exclude pattern {!r}",
    "backend_exclude": "excluded by the backend's default spec.lora_exclude pattern {!r}",
}
_HINTS = {
    "frozen": "{} covers them: freeze fewer parameters",
    "claimed": "{!r} already trains them in full: drop it, or let LoRA adapt other layers",
    "start_block": "lower lora.start_block (now {})",
    "head": "name head layers in lora.targets explicitly, or train the head with the 'head' strategy",
    "head_backend": (
        "train the head with the 'head' strategy; to adapt it with LoRA anyway, pass visionpeft.apply(..., "
        "spec=...) with a ModelSpec whose lora_exclude leaves it out ({} backend)"
    ),
    "exclude": "loosen lora.exclude (pattern {!r})",
    "backend_exclude": (
        "these layers are never adapted by default (pattern {!r}); pass visionpeft.apply(..., spec=...) with a "
        "ModelSpec whose lora_exclude leaves them out"
    ),
    "max_param_fraction": "raise lora.max_param_fraction (now {}) or set it to null, or lower lora.rank",
}


def _select(
    model: nn.Module, candidates: dict[str, nn.Module], cfg: LoRAConfig, ctx: ApplyContext, notes: list[str]
) -> list[_Target]:
    """Drop frozen / claimed / early / head / excluded / too-expensive layers; resolve rank, alpha, qkv."""
    _check_patterns_used(cfg.rank_pattern, candidates, "lora.rank_pattern")
    _check_patterns_used(cfg.alpha_pattern, candidates, "lora.alpha_pattern")
    excluded = _excluded_roots(model, cfg, ctx)
    early = _start_block_roots(cfg, ctx)
    skipped: dict[_Skip, int] = {}
    out: list[_Target] = []
    for name, module in candidates.items():
        skip = _skip_reason(name, module, cfg, ctx, excluded, early)
        if skip is None:
            target = _settings(name, module, cfg)
            cost, limit = _cost(target, cfg)
            if limit is None or cost <= limit:
                out.append(target)
                continue
            skip = _Skip("max_param_fraction", str(cfg.max_param_fraction))
            notes.append(
                f"skipped {name}: adapter of rank {target.rank} would add {cost} parameters, more than "
                f"max_param_fraction={cfg.max_param_fraction} of the layer's "
                f"{base_weight_count(module)} weights"
            )
        else:
            notes.append(f"skipped {name}: " + _NOTES[skip.reason].format(skip.detail))
        skipped[skip] = skipped.get(skip, 0) + 1
    if not out:
        raise ConfigError(_nothing_left_message(candidates, skipped))
    return out


def _settings(name: str, module: nn.Module, cfg: LoRAConfig) -> _Target:
    rank = _lookup(name, module, cfg.rank_pattern, cfg.rank)
    alpha = _lookup(name, module, cfg.alpha_pattern, cfg.alpha)
    if alpha is None:  # alpha = rank: scale 1 whatever the (per-layer) rank
        alpha = float(rank)
    segments = None
    if (
        cfg.qkv == "qv"
        and isinstance(module, nn.Linear)
        and name.rpartition(".")[2] == "qkv"
        and module.out_features == 3 * module.in_features
    ):
        d = module.in_features
        segments = ((0, d), (2 * d, 3 * d))
    return _Target(name, module, int(rank), float(alpha), segments)


def _cost(t: _Target, cfg: LoRAConfig) -> tuple[int, float | None]:
    cost = adapter_param_count(t.module, t.rank, t.segments)
    if cfg.max_param_fraction is None:
        return cost, None
    return cost, cfg.max_param_fraction * base_weight_count(t.module)


def _lookup(name: str, module: nn.Module, patterns: Mapping[str, float], default: float | None) -> float | None:
    for pattern, value in patterns.items():
        if name_matches(name, pattern) or type_matches(module, pattern):
            return value
    return default


def _check_patterns_used(patterns: Mapping[str, object], candidates: Mapping[str, nn.Module], field: str) -> None:
    for pattern in patterns:
        if not any(name_matches(n, pattern) or type_matches(m, pattern) for n, m in candidates.items()):
            near = closest(pattern, candidates) or list(candidates)[:5]
            raise ConfigError(f"{field}: pattern {pattern!r} matches none of the LoRA target layers. Closest: {near}")


def _nothing_left_message(candidates: Mapping[str, nn.Module], skipped: Mapping[_Skip, int]) -> str:
    why = "; ".join(f"{n} layer{'s' if n > 1 else ''}: {_why(skip)}" for skip, n in skipped.items())
    fixes = "; ".join(dict.fromkeys(_HINTS[skip.reason].format(skip.detail) for skip in skipped))
    return (
        f"lora: all {len(candidates)} target layers were skipped ({why}), so LoRA would add nothing. To fix: {fixes}."
    )


def _why(skip: _Skip) -> str:
    if skip.reason == "max_param_fraction":
        return f"adapter larger than lora.max_param_fraction={skip.detail} of the layer"
    return _NOTES[skip.reason].format(skip.detail)


# ---------------------------------------------------------------- wrapping and merging


@functools.cache
def _standard_keys() -> frozenset[str]:
    """Instance attributes every plain Linear/Conv2d has (computed once, on the meta device: building a
    module on the CPU would draw from torch's global random generator)."""
    with torch.device("meta"):
        return frozenset(vars(nn.Linear(1, 1))) | frozenset(vars(nn.Conv2d(1, 1, 1)))


def _wrap(t: _Target, cfg: LoRAConfig) -> LoRALayer:
    if isinstance(t.module, nn.Linear):
        layer: LoRALayer = LoRALinear(t.module, t.rank, t.alpha, cfg.dropout, cfg.use_rslora, t.segments)
    else:
        layer = LoRAConv2d(t.module, t.rank, t.alpha, cfg.dropout, cfg.use_rslora)  # type: ignore[arg-type]
    # Frameworks tag layers with plain attributes their forward reads (Ultralytics: .f, .i, .type on
    # every top-level layer of a DetectionModel); the wrapper carries them so the graph still runs.
    # Instance attributes only: Ultralytics' .type shadows nn.Module.type on the original layer too.
    own = vars(layer)
    for key, value in vars(t.module).items():
        if key in _standard_keys() or key.startswith("_") or key in own:
            continue
        if not isinstance(getattr(type(layer), key, None), property) and key not in layer._modules:
            setattr(layer, key, value)
    return layer


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def lora_layers(model: nn.Module) -> dict[str, LoRALayer]:
    """Every LoRA layer of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALayer)}


def merge_in_place(model: nn.Module) -> int:
    """Fold every adapter into its base weight but keep the adapters (undo with :func:`unmerge`)."""
    layers = lora_layers(model)
    for layer in layers.values():
        layer.merge()
    return len(layers)


def unmerge(model: nn.Module) -> int:
    """Take every merged adapter out of its base weight again."""
    layers = lora_layers(model)
    for layer in layers.values():
        layer.unmerge()
    return len(layers)


def merge_lora(model: nn.Module) -> int:
    """Replace every LoRA layer by its base layer with the update merged: the original architecture and
    parameter names (``blocks.0.attn.qkv.weight``). Returns how many layers were merged."""
    layers = lora_layers(model)
    for name, layer in layers.items():
        _replace(model, name, layer.to_base())
    return len(layers)
