"""An HF PEFT adapter folder as visionpeft strategies + tensors, checked against the model it will load onto.

The layers to adapt are read from the tensors (every ``<module>.lora_A.weight`` ... in the file), not from
``target_modules``: the file is what PEFT loaded, and PEFT's suffix matching (``"proj"`` also matches
``patch_embed.proj``) needs no re-implementation. Per layer, rank and alpha follow PEFT's own rule
(``rank_pattern`` / ``alpha_pattern`` keys matched by ``get_pattern_key``, else ``r`` / ``lora_alpha``), and the
strategies name each layer exactly (``re:<escaped name>``), so visionpeft adapts those layers and no others.
``modules_to_save`` become one ``head`` entry naming the saved modules. The backend's default exclusions (stem
conv, head) do not apply (``default_exclude: false``): a PEFT adapter may adapt them.

Refused with one line each (``ConfigError``): a PEFT type visionpeft lacks (IA3, AdaLoRA, prompt tuning ...);
options that change what the adapter computes and that visionpeft has no form for (``bias`` other than
``"none"``, ``lora_bias``, ``fan_in_fan_out``, ``target_parameters``, trainable tokens, layer replication, LoRA
variants such as aLoRA / QA-LoRA, LoHa/LoKr ``rank_dropout`` / ``module_dropout``, CP-decomposed convs), initial
weights that rewrite the base (``init_lora_weights`` PiSSA / OLoRA / CorDA / LoftQ / LoRA-GA); a pickled
``adapter_model.bin``; a tensor outside the adapted layers and ``modules_to_save``; a layer the model lacks or
that is not a plain Linear/Conv2d; a conv whose PEFT LoRA differs from visionpeft's (grouped, dilated) or any
adapter on a conv with a non-zero padding mode.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ..errors import ConfigError
from ..safe_yaml import read_text_file
from ..strategies.targets import plain_linear_or_conv
from .fields import field_problem
from .names import CONFIG_NAME, FACTORS, PICKLE_WEIGHTS_NAME, WEIGHTS_NAME, from_peft_key, pattern_value

__all__ = ["PeftAdapter", "read_peft_adapter", "is_peft_dir"]

_METHOD = {"LORA": "lora", "LOHA": "loha", "LOKR": "lokr"}
#: LoRA options that must be off/empty: each changes what the adapter computes in a way visionpeft cannot express.
_LORA_OFF = ("target_parameters", "trainable_token_indices", "layer_replication", "alora_invocation_tokens",
             "use_qalora", "use_bdlora", "arrow_config", "velora_config", "kasa_config", "monteclora_config",
             "megatron_config", "lora_bias", "fan_in_fan_out")
#: ``init_lora_weights`` values with which PEFT rewrites the base weights while building the adapter.
_BASE_REWRITING_INIT = ("pissa", "olora", "corda", "loftq", "lora_ga")


@dataclass
class PeftAdapter:
    """A PEFT adapter in visionpeft's terms.

    Attributes:
        strategies: the strategy list to :func:`visionpeft.apply` (exact layer names).
        tensors: visionpeft state-dict key -> tensor (``blocks.0.attn.qkv.lora_A``, ``head.weight``).
        source: the folder read.
    """

    strategies: list[dict[str, Any]]
    tensors: dict[str, Tensor]
    source: str


def is_peft_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by PEFT's ``save_pretrained`` (``adapter_config.json``) and not a
    visionpeft adapter folder."""
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and not (path / "adapter.json").is_file()


def _refuse(directory: Path, what: str) -> ConfigError:
    return ConfigError(f"load_adapter: {directory}: HF PEFT adapter: {what}")


def read_config(directory: Path) -> dict[str, Any]:
    """``adapter_config.json`` parsed, with the options visionpeft cannot represent refused."""
    try:
        config = json.loads(read_text_file(directory / CONFIG_NAME))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise _refuse(directory, f"{CONFIG_NAME} is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(config, dict):
        raise _refuse(directory, f"{CONFIG_NAME} holds a {type(config).__name__}, not a mapping")
    problem = field_problem(config)
    if problem is not None:
        raise _refuse(directory, f"{CONFIG_NAME}: {problem}; the file was edited or written by something else: "
                                 "re-save it with PEFT's save_pretrained")
    kind = config.get("peft_type")
    if kind not in _METHOD:
        raise _refuse(directory, f"peft_type {kind!r} has no visionpeft equivalent (visionpeft reads LORA, including "
                                 "DoRA, LOHA and LOKR)")
    if kind == "LORA":
        _check_lora_options(directory, config)
    else:
        for key in ("rank_dropout", "module_dropout"):
            if config.get(key):
                raise _refuse(directory, f"{key}={config[key]}: visionpeft's {_METHOD[kind]} has no {key}; it would "
                                         "train another way (set it to 0 to load the adapter for inference)")
    return config


def _check_lora_options(directory: Path, config: dict[str, Any]) -> None:
    if config.get("bias", "none") != "none":
        raise _refuse(directory, f"bias={config['bias']!r} (trained biases besides LoRA); visionpeft reads "
                                 "bias='none' adapters")
    for key in _LORA_OFF:
        if config.get(key):
            raise _refuse(directory, f"{key}={str(config[key])[:60]} is a PEFT option visionpeft has no form for")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INIT):
        raise _refuse(directory, f"init_lora_weights={init!r} rewrites the base weights when PEFT builds the "
                                 "adapter; visionpeft keeps the base as it is and would compute another function")


def _read_tensors(directory: Path) -> dict[str, Tensor]:
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        if (directory / PICKLE_WEIGHTS_NAME).is_file():
            raise _refuse(directory, f"only {PICKLE_WEIGHTS_NAME} (a pickle, which visionpeft never loads); "
                                     "re-save it with save_pretrained(..., safe_serialization=True)")
        raise _refuse(directory, f"{WEIGHTS_NAME} is missing")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for torn files
        raise _refuse(directory, f"{WEIGHTS_NAME} is not a readable safetensors file ({exc})") from None


def read_peft_adapter(model: nn.Module, directory: str | Path) -> PeftAdapter:
    """Read the PEFT folder ``directory`` for ``model`` (the plain base; unchanged).

    Raises:
        ConfigError: anything visionpeft cannot represent exactly (see the module docstring), in one line.
    """
    directory = Path(directory)
    config = read_config(directory)
    method = _METHOD[config["peft_type"]]
    if method == "lora" and config.get("use_dora"):
        method = "dora"
    raw = _read_tensors(directory)
    named = dict(model.named_modules())
    layers, saved = _split_keys(directory, raw, method, named, config.get("modules_to_save") or [])
    tensors: dict[str, Tensor] = {}
    for name, factors in layers.items():
        _check_layer(directory, name, named.get(name), method)
        for visionpeft_name, t in factors.items():
            tensors[f"{name}.{visionpeft_name}"] = t.reshape(-1) if visionpeft_name == "lora_magnitude" else t
    for name, keys in saved.items():
        tensors.update({f"{name}.{k}": raw_t for k, raw_t in keys.items()})
    strategies = [_adapter_entry(method, config, list(layers))]
    if saved:
        strategies.append({"method": "head", "modules": [_exact(n) for n in saved]})
    return PeftAdapter(strategies=strategies, tensors=tensors, source=str(directory))


def _split_keys(directory: Path, raw: dict[str, Tensor], method: str, named: dict[str, nn.Module],
                modules_to_save: list[str]) -> tuple[dict[str, dict[str, Tensor]], dict[str, dict[str, Tensor]]]:
    """File keys -> per adapted layer ``{visionpeft factor name: tensor}`` and per saved module ``{key: tensor}``."""
    by_suffix = {peft: ours for ours, peft in FACTORS[method].items()}
    layers: dict[str, dict[str, Tensor]] = {}
    saved: dict[str, dict[str, Tensor]] = {}
    for key, tensor in raw.items():
        rel = from_peft_key(key)
        if rel is None:
            raise _refuse(directory, f"tensor {key!r} lacks PEFT's 'base_model.model.' prefix")
        suffix = next((s for s in by_suffix if rel.endswith("." + s)), None)
        if suffix is not None:
            layers.setdefault(rel[: -len(suffix) - 1], {})[by_suffix[suffix]] = tensor
            continue
        owner = _saved_owner(rel, named, modules_to_save)
        if owner is None:
            raise _refuse(directory, _unplaced(rel, method, sorted(by_suffix), named, modules_to_save))
        saved.setdefault(owner, {})[rel[len(owner) + 1:]] = tensor
    if not layers:
        raise _refuse(directory, f"no {method} tensors in {WEIGHTS_NAME}")
    return layers, saved


def _unplaced(rel: str, method: str, factors: list[str], named: dict[str, nn.Module],
              modules_to_save: list[str]) -> str:
    """Why the file's tensor ``rel`` has no place: a CP-decomposed conv, a saved module the model lacks, or neither
    a factor nor inside ``modules_to_save``."""
    if rel.rpartition(".")[2] in ("hada_t1", "hada_t2", "lokr_t1", "lokr_t2"):
        return (f"{rel.rpartition('.')[0]}: a CP-decomposed conv (use_effective_conv2d=True), which visionpeft's "
                f"{method} has no form for")
    parts = rel.split(".")
    for module in (".".join(parts[:i]) for i in range(1, len(parts))):
        if module not in named and any(module.endswith(m) for m in modules_to_save):
            return (f"the model has no module {module!r} (saved whole in the file, modules_to_save "
                    f"{modules_to_save}); load it onto the base model the adapter was trained on")
    return f"tensor {rel!r} is neither a {method} factor ({factors}) nor inside modules_to_save {modules_to_save}"


def _saved_owner(key: str, named: dict[str, nn.Module], modules_to_save: list[str]) -> str | None:
    """The module of the model holding ``key`` that PEFT's ``modules_to_save`` matches (``str.endswith``)."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if prefix in named and any(prefix.endswith(m) for m in modules_to_save):
            return prefix
    return None


def _check_layer(directory: Path, name: str, module: nn.Module | None, method: str) -> None:
    if module is None:
        raise _refuse(directory, f"the model has no module {name!r} (adapted in the file); load it onto the base "
                                 "model the adapter was trained on")
    if not plain_linear_or_conv(module):
        raise _refuse(directory, f"{name} is a {type(module).__name__}; visionpeft adapts plain nn.Linear / "
                                 "nn.Conv2d layers only")
    if not isinstance(module, nn.Conv2d):
        return
    if module.padding_mode != "zeros":
        raise _refuse(directory, f"{name}: PEFT's {method} convolves with zero padding, this Conv2d pads "
                                 f"{module.padding_mode!r}; visionpeft's layer would compute another function")
    if method in ("lora", "dora") and (module.groups != 1 or tuple(module.dilation) != (1, 1)):
        raise _refuse(directory, f"{name}: PEFT's LoRA on a Conv2d with groups={module.groups}, "
                                 f"dilation={tuple(module.dilation)} (one input conv over all channels, no dilation) "
                                 "is not visionpeft's conv LoRA (rank per group, the base's dilation)")


def _exact(name: str) -> str:
    return "re:" + re.escape(name)


def _adapter_entry(method: str, config: dict[str, Any], layers: list[str]) -> dict[str, Any]:
    """The strategy entry adapting exactly ``layers`` with PEFT's per-layer rank and alpha."""
    rank = int(config.get("r", 8))
    alpha_key = "lora_alpha" if method in ("lora", "dora") else "alpha"
    alpha = float(config.get(alpha_key, 8))
    ranks = {n: int(pattern_value(config.get("rank_pattern") or {}, n, rank)) for n in layers}
    alphas = {n: float(pattern_value(config.get("alpha_pattern") or {}, n, alpha)) for n in layers}
    entry: dict[str, Any] = {
        "method": method, "targets": [_exact(n) for n in layers], "rank": rank, "alpha": alpha,
        "rank_pattern": {_exact(n): r for n, r in ranks.items() if r != rank},
        "alpha_pattern": {_exact(n): a for n, a in alphas.items() if a != alpha},
        "max_param_fraction": None, "default_exclude": False,
    }
    if method in ("lora", "dora"):
        entry |= {"dropout": float(config.get("lora_dropout") or 0.0), "use_rslora": bool(config.get("use_rslora"))}
    if method == "lokr":
        entry |= {"decompose_both": bool(config.get("decompose_both")),
                  "decompose_factor": int(config.get("decompose_factor", -1))}
    return entry


def check_tensors(root: nn.Module, trainable: Any, tensors: dict[str, Tensor], source: str) -> None:
    """Every tensor has a place of its shape in the adapted ``root``, every trainable tensor is in the file."""
    sd = root.state_dict()
    missing = [k for k in tensors if k not in sd]
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(sd[k].shape)}" for k, v in tensors.items()
              if k in sd and sd[k].shape != v.shape]
    absent = [k for k in trainable if k not in tensors]
    problems = "; ".join(f"{len(v)} {what} {v[:3]}" for what, v in (
        ("tensors have no place in the model", missing), ("shape mismatches", shapes),
        ("adapter tensors are not in the file", absent)) if v)
    if problems:
        raise ConfigError(f"load_adapter: {source}: HF PEFT adapter does not fit this model: {problems}. Load it "
                          "onto the base model it was trained on (same architecture and number of classes)")


@torch.no_grad()
def copy_tensors(root: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Copy ``tensors`` into ``root``'s state (dtype converted to the model's)."""
    sd = root.state_dict()
    for k, v in tensors.items():
        sd[k].copy_(v)
