"""An adapted model as HF PEFT's ``adapter_config.json`` + ``adapter_model.safetensors``, or one line saying why not.

What PEFT represents exactly, and how (``peft.PeftModel.from_pretrained(fresh_base, dir)`` then computes what the
visionpeft model computes, eval mode):

* LoRA / DoRA on ``nn.Linear``: ``lora_A.weight`` ``(r, in)``, ``lora_B.weight`` ``(out, r)``, scale
  ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``); DoRA adds ``lora_magnitude_vector`` ``(out,)``.
* LoRA on q and v of a fused ``qkv`` (``qkv: qv``): one LoRA of rank ``2r`` on the whole ``qkv`` whose ``A``
  stacks both ``A`` and whose ``B`` is block-diagonal with zero rows for k (``lora_alpha`` doubled, or times
  ``sqrt(2)`` under rsLoRA, so the scale stays ``alpha / r``): the same update, exactly. DoRA's magnitude for the
  k rows is their own weight norm, so PEFT's factor ``m / ||W + 0||`` there is 1 (to rounding).
* LoRA / DoRA on ``nn.Conv2d`` with ``groups == 1``, no dilation, zero padding (PEFT's ``lora_A`` is a conv with
  the base's kernel, stride and padding only): ``(r, in, kh, kw)`` and ``(out, r, 1, 1)``; DoRA's magnitude is
  ``(1, out, 1, 1)`` there.
* LoHa / LoKr on Linear and Conv2d (grouped too; PEFT's flattened conv form, zero padding): the same factor
  names and shapes, scale ``alpha / r``.
* Modules trained in full (``head``, ``norm``): ``modules_to_save``, each module's whole state dict.
* Per-layer ranks and alphas (budgets, ``rank_pattern``): ``rank_pattern`` / ``alpha_pattern`` keyed by exact names.

Refused, naming the method or layer and why (nothing is written): VPT, AdaptFormer, SSF, BitFit and full
fine-tuning (no PEFT form that computes the same); LoRA/DoRA on grouped, depthwise or dilated convs and any
adapter on a conv with non-zero padding mode (PEFT's layer computes another function); two adapter methods, or
entries with different global settings, in one model (a PEFT adapter has one type and one set); BatchNorm
statistics the plan lets change outside a saved module (PEFT's file has no place for them); a saved module whose
name another module's name ends with (PEFT's ``modules_to_save`` matching would catch both).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..api import get_state, unwrap
from ..errors import ConfigError
from ..plan import TrainabilityPlan
from ..strategies.adapter_layer import WeightAdapterLayer
from ..strategies.dora import _DoRAMixin
from ..strategies.lora.layers import LoRALayer, LoRALinear
from .names import FACTORS, PEFT_TYPES, exact_key, exact_targets, to_peft_key

__all__ = ["PeftExport", "export_peft", "ADAPTER_METHODS", "PASSIVE_METHODS"]

#: Methods that become PEFT tuner layers.
ADAPTER_METHODS = frozenset(FACTORS)
#: Methods whose effect PEFT holds without a tuner of their own: ``head`` / ``norm`` train whole modules
#: (``modules_to_save``); ``freeze`` only decides what trains.
PASSIVE_METHODS = frozenset({"head", "norm", "freeze"})
_WHY = {
    "vpt": "prompt tokens inserted into the token sequence; PEFT's prompt methods are for language models",
    "adaptformer": "a parallel bottleneck MLP beside each block's MLP; PEFT has no such tuner",
    "ssf": "per-channel scale and shift after layers; PEFT has no such tuner",
    "bitfit": "trained biases of frozen layers; PEFT's bias option saves every bias of the model or only those of "
              "LoRA layers, never this set, and needs a LoRA on top",
    "full": "every weight trains; that is a model, not an adapter: use 'visionpeft merge' for a plain checkpoint",
}


@dataclass
class PeftExport:
    """What :func:`export_peft` produced: the config mapping and the tensors under PEFT's keys (CPU)."""

    config: dict[str, Any]
    tensors: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class _Layer:
    rank: int
    alpha: float
    tensors: dict[str, Tensor]


def _refuse(what: str) -> ConfigError:
    return ConfigError(f"save_adapter(format='peft'): {what}; nothing was written")


def export_peft(model: Any) -> PeftExport:
    """PEFT's config and tensors for the visionpeft adapter of ``model`` (which stays unchanged).

    Raises:
        ConfigError: the model has no visionpeft strategies, or PEFT cannot represent them exactly (one line
            naming the method or layer and why; see the module docstring).
    """
    root = unwrap(model)
    state = get_state(root)
    if state is None:
        raise _refuse("the model has no visionpeft strategies applied (visionpeft.apply)")
    method, settings = _adapter_method(state.configs)
    layers = {n: m for n, m in root.named_modules() if isinstance(m, WeightAdapterLayer)}
    if any(layer.merged for layer in layers.values()):
        raise _refuse("the adapters are merged into the base weights (merge_in_place); unmerge them first")
    exported = {n: _export_layer(n, m, method) for n, m in layers.items()}
    saved = _saved_modules(root, state.plan, layers)
    tensors = {to_peft_key(n, k): t for n, layer in exported.items() for k, t in layer.tensors.items()}
    sd = root.state_dict()
    for name in saved:
        prefix = name + "."
        tensors.update({to_peft_key(name, k[len(prefix):]): sd[k] for k in sd if k.startswith(prefix)})
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    config = _config(root, method, settings, exported, saved)
    return PeftExport(config=config, tensors=tensors)


def _adapter_method(configs: list[Any]) -> tuple[str, dict[str, Any]]:
    """The one adapter method of the strategy list and its PEFT-global settings (dropout, rsLoRA, LoKr's
    factorisation), or a refusal naming the method PEFT lacks / the conflicting entries."""
    for i, cfg in enumerate(configs):
        if cfg.method not in ADAPTER_METHODS | PASSIVE_METHODS:
            why = _WHY.get(cfg.method, "PEFT has no equivalent method")
            raise _refuse(f"strategies.{i} ({cfg.method}) has no exact HF PEFT form: {why}")
    entries = [(i, c) for i, c in enumerate(configs) if c.method in ADAPTER_METHODS]
    if not entries:
        raise _refuse("no LoRA, DoRA, LoHa or LoKr among the strategies; a PEFT adapter needs one (modules trained "
                      "in full alone are not a PEFT adapter)")
    methods = {c.method for _, c in entries}
    if len(methods) > 1:
        raise _refuse(f"the strategies combine {sorted(methods)}; a PEFT adapter has one type for all its layers")
    settings = [_global_settings(c) for _, c in entries]
    if any(s != settings[0] for s in settings):
        raise _refuse(f"strategies {[i for i, _ in entries]} differ in {settings}; a PEFT adapter has one value for "
                      "all its layers")
    return entries[0][1].method, settings[0]


def _global_settings(cfg: Any) -> dict[str, Any]:
    if cfg.method in ("lora", "dora"):
        return {"lora_dropout": cfg.dropout, "use_rslora": cfg.use_rslora}
    if cfg.method == "lokr":
        return {"decompose_both": cfg.decompose_both, "decompose_factor": cfg.decompose_factor}
    return {}


def _export_layer(name: str, layer: WeightAdapterLayer, method: str) -> _Layer:
    base = layer.base_layer
    if isinstance(base, nn.Conv2d):
        _check_conv(name, base, method)
    if isinstance(layer, LoRALayer):
        return _lora_layer(name, layer, dora=isinstance(layer, _DoRAMixin))
    params = {n: p for n, p in layer.named_parameters(recurse=False)}
    factors = FACTORS[method]
    unknown = sorted(set(params) - set(factors))
    if unknown:
        raise _refuse(f"{name}: {type(layer).__name__} has tensors {unknown} that PEFT's {method} has no place for")
    return _Layer(rank=int(layer.rank), alpha=float(layer.alpha),  # type: ignore[arg-type]
                  tensors={factors[n]: p for n, p in params.items()})


def _check_conv(name: str, conv: nn.Conv2d, method: str) -> None:
    """PEFT's conv layers: LoRA's ``lora_A`` takes only kernel, stride and padding (no groups, no dilation); every
    method convolves with zero padding (``F.conv2d``), whatever the base's ``padding_mode``."""
    if conv.padding_mode != "zeros":
        raise _refuse(f"{name}: Conv2d with padding_mode={conv.padding_mode!r}; PEFT's {method} convolves its update "
                      "with zero padding, so it would compute another function")
    if method not in ("lora", "dora"):
        return
    if conv.groups != 1:
        raise _refuse(f"{name}: Conv2d with groups={conv.groups}; visionpeft's {method} there has a rank per group "
                      "(it merges exactly), PEFT's grouped-conv LoRA has one rank-r input conv over all channels: "
                      "another function. Exclude grouped/depthwise convs (exclude: ['DWConv'] or their names), or use "
                      "LoHa/LoKr, which PEFT represents on grouped convs")
    if tuple(conv.dilation) != (1, 1):
        raise _refuse(f"{name}: Conv2d with dilation={tuple(conv.dilation)}; PEFT's lora_A conv drops the dilation, "
                      "so it would compute another function")


def _lora_layer(name: str, layer: LoRALayer, dora: bool) -> _Layer:
    """LoRA/DoRA factors as PEFT stores them; segments (q/v of a fused qkv) become one block LoRA (see module doc)."""
    a = layer.lora_A.detach()
    segments = getattr(layer, "segments", None) if isinstance(layer, LoRALinear) else None
    n_seg = 1 if segments is None else len(segments)
    if segments is None:
        b = layer.lora_B.detach()
    else:
        b = layer._full_B(layer.lora_A.dtype).detach()
    alpha = layer.alpha * (math.sqrt(n_seg) if layer.use_rslora else n_seg)
    tensors = {"lora_A.weight": a, "lora_B.weight": b}
    if dora:
        tensors["lora_magnitude_vector"] = _magnitude(layer)
    return _Layer(rank=layer.rank * n_seg, alpha=alpha, tensors=tensors)


def _magnitude(layer: LoRALayer) -> Tensor:
    """DoRA's magnitude over all output rows (rows without an adapter: their weight norm, as PEFT computes it),
    shaped as PEFT's parameter (``(out,)``, ``(1, out, 1, 1)`` for convs)."""
    mag = layer.lora_magnitude.detach()  # type: ignore[union-attr]
    rows = layer._rows  # type: ignore[union-attr]
    w = layer.base_weight.detach().to(mag.dtype)
    if rows is not None:
        full = torch.linalg.norm(w.reshape(w.shape[0], -1), dim=1)
        mag = full.index_copy(0, rows, mag)
    return mag.reshape(1, -1, 1, 1) if w.dim() == 4 else mag


def _saved_modules(root: nn.Module, plan: TrainabilityPlan, layers: dict[str, nn.Module]) -> list[str]:
    """The outermost modules trained in full (every parameter trainable, no adapter inside): PEFT's
    ``modules_to_save``. Every trainable tensor must be an adapter factor or inside one of them, every BatchNorm
    statistic the plan lets change inside one of them."""
    named = dict(root.named_modules())
    adapter_params = {f"{n}.{p}" for n, m in layers.items() for p, _ in m.named_parameters(recurse=False)}
    loose = [k for k in plan.trainable if k not in adapter_params]
    saved: list[str] = []
    for key in loose:
        if any(key.startswith(s + ".") for s in saved):
            continue
        owner = _outermost_full(named, key.rpartition(".")[0], plan.trainable, layers)
        if owner is None:
            raise _refuse(f"{key} trains, but not as part of a module trained in full; PEFT's file holds adapter "
                          "factors and whole modules (modules_to_save) only")
        saved.append(owner)
    stats = [k for k in plan.bn_buffers() if not any(k.startswith(s + ".") for s in saved)]
    if stats:
        raise _refuse(f"the plan updates BatchNorm statistics {stats[:3]} (bn: train) outside a module trained in "
                      "full; PEFT's file has no place for them")
    for s in saved:
        # PEFT wraps every module whose name ends with a modules_to_save entry; a stateless one (an Identity)
        # computes the same wrapped, a module with tensors would become a second trained module.
        clash = [n for n, m in named.items() if n not in saved and n.endswith(s) and _has_state(m)]
        if clash:
            raise _refuse(f"saved module {s!r}: PEFT's modules_to_save matches every module whose name ends with it, "
                          f"which would also train {clash[:3]}")
    for n in layers:
        hit = next((s for s in saved if re.match(rf"(^|.*\.){s}($|\..*)", n)), None)
        if hit is not None:
            raise _refuse(f"{n}: PEFT never adapts a layer whose name contains the modules_to_save entry {hit!r}")
    return sorted(saved, key=list(named).index)


#: Module classes PEFT's ``modules_to_save`` cannot wrap (``AuxiliaryTrainingWrapper.check_module``).
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _outermost_full(named: dict[str, nn.Module], module: str, trainable: Any,
                    layers: dict[str, nn.Module]) -> str | None:
    """The outermost ancestor of ``module`` (itself included) whose parameters all train and hold no adapter, and
    that PEFT can wrap (its ``ModulesToSaveWrapper`` refuses containers: ``ModuleList`` / ``ModuleDict`` ...)."""
    def full(name: str) -> bool:
        mod = named[name]
        if isinstance(mod, _CONTAINERS):
            return False
        params = [f"{name}.{p}" if name else p for p, _ in mod.named_parameters()]
        inside = any(n == name or n.startswith(name + ".") for n in layers) if name else bool(layers)
        return bool(params) and not inside and all(p in trainable for p in params)

    if module not in named or not full(module):
        return None
    parts = module.split(".")
    best = module
    for i in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:i])
        if not full(parent):
            break
        best = parent
    return best


def _config(root: nn.Module, method: str, settings: dict[str, Any], layers: dict[str, _Layer],
            saved: list[str]) -> dict[str, Any]:
    """``adapter_config.json`` for ``peft_type`` of ``method``: exact target names, the most common rank and alpha
    as ``r`` / alpha, the others as ``rank_pattern`` / ``alpha_pattern``."""
    rank = Counter(x.rank for x in layers.values()).most_common(1)[0][0]
    alpha = Counter(x.alpha for x in layers.values()).most_common(1)[0][0]
    alpha = int(alpha) if float(alpha).is_integer() else alpha
    config: dict[str, Any] = {
        "peft_type": PEFT_TYPES[method],
        "task_type": None,
        "auto_mapping": {"base_model_class": type(root).__name__, "parent_library": type(root).__module__},
        "base_model_name_or_path": None,
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "target_modules": exact_targets(layers),
        "exclude_modules": None,
        "modules_to_save": saved or None,
        "rank_pattern": {exact_key(n): x.rank for n, x in layers.items() if x.rank != rank},
        "alpha_pattern": {exact_key(n): x.alpha for n, x in layers.items() if x.alpha != alpha},
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    if method in ("lora", "dora"):
        config |= {"lora_alpha": alpha, "use_dora": method == "dora", "bias": "none", "fan_in_fan_out": False,
                   "init_lora_weights": True, "lora_bias": False, **settings}
    else:
        config |= {"alpha": alpha, "rank_dropout": 0.0, "module_dropout": 0.0, "use_effective_conv2d": False,
                   "init_weights": True, **settings}
    if method == "lokr":
        config["rank_dropout_scale"] = False
    return config
