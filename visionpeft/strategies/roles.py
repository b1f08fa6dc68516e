"""Strategy defaults derived from a model's roles (head, stem, blocks, token blocks).

Every adapter method reads its defaults here instead of a backend field, so a new method needs no backend
edit: it calls these functions with the model and its :class:`~visionpeft.spec.ModelSpec`. A spec field that
a backend sets (an *override*, e.g. Ultralytics' conv-family ``lora_targets``) wins over the derivation.

The derivations (each returns name/type patterns for :mod:`visionpeft.matching`):

* :func:`adapter_targets` (LoRA, DoRA, LoHa, LoKr): a transformer's token-block ``Linear`` layers; a model
  with a known stem but no token blocks (a CNN): the dominant layer type (``Conv2d`` or ``Linear``, by weight
  count) outside the head; a spec naming neither (a plain ``nn.Module``): every ``Linear`` and ``Conv2d``.
* :func:`adapter_exclude`: the head of a described model, plus the stem's first conv when the targets are
  ``Conv2d`` (3 input channels: a rank-r adapter is about as large as the layer, and it sees raw pixels).
* :func:`ssf_targets`: a transformer's token-block ``Linear`` and norm layers, the stem's projection (its last
  ``Linear``/``Conv2d``) and the final norm (the SSF paper's placement); a CNN every norm layer (one after
  each conv); a spec naming neither every ``Linear``, ``Conv2d`` and norm layer.
* :func:`mlp_modules` (AdaptFormer): the ``*.mlp`` modules holding ``Linear`` layers inside the blocks
  (every token block's MLP in a ViT; ConvNeXt blocks' MLPs too); none for a spec naming neither stem nor tokens.
* :func:`token_role` (VPT): the token blocks, or ``None``.

Patterns are compact where that is exact: when the token blocks are all the parameterised children of one
container (``blocks.0`` ... ``blocks.L-1``), a layer found at the same place in every block becomes one glob
(``blocks.*.attn.qkv``); otherwise the layers are named one by one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace

from torch import nn

from ..matching import name_matches
from ..spec import ModelSpec, TokenSpec

__all__ = [
    "NORM_TYPES",
    "adapter_exclude",
    "adapter_targets",
    "described",
    "mlp_modules",
    "ssf_targets",
    "stem_first_conv",
    "token_block_layers",
    "token_role",
    "with_defaults",
]

#: Type patterns of normalisation layers (BatchNorm/InstanceNorm via ``_NormBase``, LayerNorm, GroupNorm).
NORM_TYPES: tuple[str, ...] = ("_NormBase", "LayerNorm", "GroupNorm")
_NORM_CLASSES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_ADAPTABLE = (nn.Linear, nn.Conv2d)


def described(spec: ModelSpec) -> bool:
    """Whether the spec names a stem or token blocks, i.e. a backend described the model's structure.

    A bare ``ModelSpec()`` or the generic spec of a plain ``nn.Module`` does not: its defaults stay broad.
    """
    return bool(spec.stem) or spec.tokens is not None


def token_role(spec: ModelSpec) -> TokenSpec | None:
    """The token blocks, their width and prefix tokens (VPT's insertion point), or ``None``."""
    return spec.tokens


# ----------------------------------------------------------------------------------------- helpers
def _under(name: str, roots: Iterable[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _pattern(model: nn.Module, name: str, *, params_only: bool = False) -> str:
    """``name`` itself when, as a pattern, it matches no other module (``params_only``: no other module with
    parameters); else an anchored regex."""
    hits = [n for n, m in model.named_modules()
            if n and name_matches(n, name) and (n == name or not params_only or _has_params(m))]
    return name if hits == [name] else "re:" + re.escape(name)


def _head_modules(model: nn.Module, spec: ModelSpec) -> set[str]:
    """Names of the head modules and everything inside them (head entries are names or patterns)."""
    named = [n for n, _ in model.named_modules() if n]
    roots = [n for n in named if any(name_matches(n, h) for h in spec.head)]
    return {n for n in named if _under(n, roots)}


def token_block_layers(model: nn.Module, spec: ModelSpec, kinds: tuple[type[nn.Module], ...]) -> tuple[str, ...]:
    """Patterns of the layers of type ``kinds`` inside the token blocks (empty without token blocks).

    One glob per relative name when the token blocks are all parameterised children of one container and
    the layer exists in every block (``blocks.*.mlp.fc1``); otherwise the layers' own names.
    """
    if spec.tokens is None or not spec.tokens.blocks:
        return ()
    blocks = spec.tokens.blocks
    per_block = [
        [rel for rel, m in model.get_submodule(b).named_modules() if rel and isinstance(m, kinds)] for b in blocks
    ]
    parent = blocks[0].rpartition(".")[0]
    siblings = [f"{parent}.{n}" if parent else n for n, m in
                (model.get_submodule(parent) if parent else model).named_children() if _has_params(m)]
    if list(blocks) == siblings and all(rels == per_block[0] for rels in per_block):
        prefix = f"{parent}.*." if parent else "*."
        return tuple(prefix + rel for rel in per_block[0])
    return tuple(f"{b}.{rel}" for b, rels in zip(blocks, per_block) for rel in rels)


def stem_first_conv(model: nn.Module, spec: ModelSpec) -> str | None:
    """Name of the first ``Conv2d`` of the stem (in module order), or ``None``."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and _under(name, spec.stem):
            return name
    return None


def _dominant_kind(model: nn.Module, spec: ModelSpec) -> str:
    """``"Conv2d"`` or ``"Linear"``: the layer type holding most weights outside the head."""
    in_head = _head_modules(model, spec)
    size = {"Linear": 0, "Conv2d": 0}
    for name, module in model.named_modules():
        kind = "Conv2d" if isinstance(module, nn.Conv2d) else "Linear" if isinstance(module, nn.Linear) else None
        if kind and name not in in_head:
            size[kind] += module.weight.numel()
    return max(size, key=size.__getitem__)


# ------------------------------------------------------------------------------------ derivations
def adapter_targets(model: nn.Module, spec: ModelSpec) -> tuple[str, ...]:
    """Default targets of the low-rank adapter methods (LoRA, DoRA, LoHa, LoKr); see the module docstring."""
    if spec.lora_targets is not None:
        return spec.lora_targets
    if spec.tokens is not None:
        return token_block_layers(model, spec, (nn.Linear,))
    if not described(spec):
        return ("Linear", "Conv2d")
    return (_dominant_kind(model, spec),)


def adapter_exclude(model: nn.Module, spec: ModelSpec) -> tuple[str, ...]:
    """Patterns never adapted by default: the stem's first conv (when the targets are ``Conv2d``) and, for a
    described model (:func:`described`), the head: a backend's head is re-initialised for the dataset, so it
    stays out even of targets a user names (a hand-made spec's head is only left out of default targets)."""
    if spec.lora_exclude is not None:
        return spec.lora_exclude
    exclude = list(spec.head) if described(spec) else []
    if adapter_targets(model, spec) == ("Conv2d",):
        conv = stem_first_conv(model, spec)
        if conv is not None:
            exclude.insert(0, _pattern(model, conv))
    return tuple(exclude)


def _final_norms(model: nn.Module, spec: ModelSpec) -> list[str]:
    """Norm layers that are blocks of their own after the last token block (a ViT's ``norm``)."""
    last = spec.tokens.blocks[-1] if spec.tokens is not None and spec.tokens.blocks else None
    after = spec.blocks[spec.blocks.index(last) + 1:] if last in spec.blocks else ()
    named = dict(model.named_modules())
    return [b for b in after if isinstance(named.get(b), _NORM_CLASSES)]


def ssf_targets(model: nn.Module, spec: ModelSpec) -> tuple[str, ...]:
    """Default SSF placement; see the module docstring (Lian et al., 2022 for the ViT placement)."""
    if spec.ssf_targets is not None:
        return spec.ssf_targets
    if spec.tokens is None:
        return NORM_TYPES if described(spec) else ("Linear", "Conv2d", *NORM_TYPES)
    # The stem's projection: its last Linear/Conv2d, the layer that makes the tokens (a hybrid ViT's
    # convolutional backbone before it is not part of the placement).
    stem_proj = [n for n, m in model.named_modules() if _under(n, spec.stem) and isinstance(m, _ADAPTABLE)][-1:]
    return (*token_block_layers(model, spec, (nn.Linear,)), *token_block_layers(model, spec, _NORM_CLASSES),
            *(_pattern(model, n, params_only=True) for n in stem_proj),
            *(_pattern(model, n, params_only=True) for n in _final_norms(model, spec)))


def mlp_modules(model: nn.Module, spec: ModelSpec) -> tuple[str, ...]:
    """Default AdaptFormer places: ``*.mlp`` modules holding ``Linear`` layers, outside the head."""
    if spec.mlp_modules is not None:
        return spec.mlp_modules
    if not described(spec):
        return ()
    in_head = _head_modules(model, spec)
    return tuple(
        n for n, m in model.named_modules()
        if n.rpartition(".")[2] == "mlp" and n not in in_head and any(isinstance(c, nn.Linear) for c in m.modules())
    )


def with_defaults(model: nn.Module, spec: ModelSpec) -> ModelSpec:
    """``spec`` with every override left ``None`` filled by its derivation, so that it can be read
    (``spec.lora_targets``...) and saved; the strategies get the same values either way."""
    return replace(
        spec,
        lora_targets=adapter_targets(model, spec),
        lora_exclude=adapter_exclude(model, spec),
        ssf_targets=ssf_targets(model, spec),
        mlp_modules=mlp_modules(model, spec),
    )
