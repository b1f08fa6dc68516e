"""Adapter files: ``adapter.safetensors`` (what the plan trains) + ``adapter.json`` (how to rebuild it).

No pickle anywhere on this path: tensors go through safetensors, metadata through JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .adapter_fields import check_adapter_fields
from .api import apply, get_state, unwrap
from .checkpoint import atomic_write
from .errors import AdapterMismatchError, ConfigError
from .peft_format import load_peft_adapter, looks_like_peft, save_peft_adapter
from .plan import TrainabilityPlan
from .safe_yaml import read_text_file
from .snapshot import atomic
from .spec import ModelSpec
from .wrappers import refuse_ddp

FORMAT = "visionpeft-adapter"
FORMAT_VERSION = 1
WEIGHTS_NAME = "adapter.safetensors"
CONFIG_NAME = "adapter.json"


def adapter_tensors(model: nn.Module, plan: TrainabilityPlan) -> dict[str, torch.Tensor]:
    """Trainable tensors plus BatchNorm statistics the plan lets change, as CPU copies."""
    sd = model.state_dict(keep_vars=True)
    # clone(): safetensors refuses tensors that share storage.
    return {k: sd[k].detach().to("cpu").contiguous().clone() for k in adapter_keys(sd, plan)}


def adapter_keys(state_dict: dict[str, torch.Tensor], plan: TrainabilityPlan) -> list[str]:
    """State-dict keys an adapter holds: the plan's trainable tensors, then the BN statistics it lets change."""
    keys = [k for k in state_dict if k in plan.trainable] + [k for k in plan.bn_buffers() if k in state_dict]
    return list(dict.fromkeys(keys))


def _tensor_hash(t: torch.Tensor) -> str:
    data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(data.tobytes()).hexdigest()[:16]


def base_fingerprint(model: nn.Module, exclude: Iterable[str]) -> dict[str, Any]:
    """Per-tensor short hashes and an overall digest of every state tensor the adapter does not hold."""
    skip = set(exclude)
    tensors = {
        k: f"{tuple(v.shape)}|{str(v.dtype).removeprefix('torch.')}|{_tensor_hash(v)}"
        for k, v in model.state_dict().items()
        if k not in skip and v.is_floating_point()
    }
    digest = hashlib.sha256("\n".join(f"{k}={v}" for k, v in sorted(tensors.items())).encode()).hexdigest()
    return {"sha256": digest, "num_tensors": len(tensors), "tensors": tensors}


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("visionpeft", "torch", "timm", "ultralytics"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def structure_signature(model: nn.Module) -> dict[str, Any]:
    """What the model computes apart from its tensors: per module, its class and a short hash of its settings.

    Settings are the plain attributes a module sets on itself (ints, floats, strings, bools, tuples of them: a
    conv's stride, padding, groups; a norm's eps; a ViT's ``global_pool``), so ``tf_efficientnet_lite0``
    (``Conv2dSame``, TF padding) and ``efficientnet_lite0`` (``Conv2d``) differ although their tensors are
    identical. The root module contributes only the attributes in ``_ROOT_SETTINGS`` (pooling and prefix
    tokens). Left out, because they change while a model is used or only matter while training: attributes
    that override a class-level default at run time (Ultralytics ``Detect.shape`` after a forward, export
    flags), ``torch.Size`` values, file paths (``pt_path``), dropout / drop-path modules, ``drop*`` rates,
    ``training``, ``inplace``, gradient checkpointing, init-only switches.
    """
    modules = {}
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, nn.modules.dropout._DropoutNd) or kind.startswith("DropPath"):
            continue
        settings = sorted(
            (k, repr(v)) for k, v in vars(module).items()
            if _is_setting(module, k, v) and (name or k in _ROOT_SETTINGS)
        )
        modules[name or "<root>"] = f"{kind}|{hashlib.sha256(repr(settings).encode()).hexdigest()[:8]}"
    digest = hashlib.sha256("\n".join(f"{k}={v}" for k, v in modules.items()).encode()).hexdigest()
    return {"sha256": digest, "modules": modules}


#: The root's own attributes are mostly bookkeeping frameworks add (Ultralytics' trainer sets ``nc``, ``task``,
#: ``pt_path`` on the model it trains); only these change what a (timm) model computes.
_ROOT_SETTINGS = {"global_pool", "num_prefix_tokens", "no_embed_class", "pool_include_prefix", "has_class_token",
                  "num_reg_tokens", "dynamic_img_size", "dynamic_img_pad"}
#: State rather than settings: the train/eval mode, a LoRA layer's merged flag, training-only switches.
_TRAINING_ONLY = {"training", "merged", "inplace", "grad_checkpointing", "weight_init_mode", "fix_init"}
_PLAIN = (bool, int, float, str, type(None))


def _is_setting(module: nn.Module, key: str, value: Any) -> bool:
    if key.startswith("_") or key in _TRAINING_ONLY or "drop" in key or hasattr(type(module), key):
        return False
    if isinstance(value, str):
        return "/" not in value and "\\" not in value  # a location, not a setting
    return isinstance(value, _PLAIN) or (type(value) is tuple and all(isinstance(v, _PLAIN) for v in value))


def save_adapter(model: Any, directory: str | Path, extra: dict[str, Any] | None = None,
                 format: Literal["visionpeft", "peft"] = "visionpeft") -> Path:  # noqa: A002 (the user's word)
    """Write the adapter of ``model`` into ``directory`` (created); returns it.

    ``format="visionpeft"`` (default): ``adapter.safetensors`` and ``adapter.json``. ``adapter.json`` records the
    strategies, the base identity (``spec.name``, the module structure, a fingerprint of every frozen tensor) and
    versions; the safetensors header repeats the strategies, so a config that no longer matches its tensors is
    refused on load.

    ``format="peft"``: HF PEFT's ``adapter_config.json`` + ``adapter_model.safetensors``, which
    ``peft.PeftModel.from_pretrained(base, directory)`` loads onto the plain base model with the same outputs.
    What PEFT cannot represent exactly (VPT, SSF, AdaptFormer, BitFit, grouped-conv LoRA ...) raises
    ``ConfigError`` naming the method or layer, and nothing is written (:mod:`visionpeft.peft_format.export`).
    ``extra`` has no place in PEFT's files and must be ``None`` then.
    """
    if format == "peft":
        if extra:
            raise ConfigError("save_adapter(format='peft'): 'extra' has no place in PEFT's files; drop it")
        return save_peft_adapter(model, directory)
    if format != "visionpeft":
        raise ConfigError(f"save_adapter: format={format!r}; use 'visionpeft' (default) or 'peft' (HF PEFT's files)")
    root = unwrap(model)
    state = get_state(root)
    if state is None:
        raise ConfigError("save_adapter: the model has no visionpeft strategies applied (visionpeft.apply)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = adapter_tensors(root, state.plan)
    _check_complete(tensors, state.plan)
    strategies = [c.model_dump(mode="json") for c in state.configs]
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "strategies": strategies,
        "base": {
            "backend": state.spec.backend,
            "name": state.spec.name,
            **base_fingerprint(root, tensors),
            "structure": structure_signature(root),
        },
        "plan": {k: v for k, v in state.plan.to_dict().items() if k not in {"trainable", "bn_modes"}},
        "adapter_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "versions": _versions(),
        "extra": extra or {},
    }
    header = {"format": FORMAT, "strategies": json.dumps(strategies, sort_keys=True)}
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata=header))
    atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    return directory


def _check_complete(tensors: dict[str, torch.Tensor], plan: TrainabilityPlan) -> None:
    """An adapter must hold every tensor the plan trains: one that lacks any would load as something else."""
    missing = sorted(k for k in plan.trainable if k not in tensors)
    if missing:
        raise ConfigError(
            f"save_adapter: the model's state dict lacks {len(missing)} of the {len(plan.trainable)} tensors the plan "
            f"trains ({missing[:3]}); its parameters were renamed or replaced after visionpeft.apply (a wrapper "
            "visionpeft does not know, or a module swapped by hand): save the adapted module itself"
        )


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """Parse and sanity-check ``adapter.json`` in ``directory``."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{path}: no adapter config here; expected a directory written by save_adapter (or by "
                          "HF PEFT's save_pretrained: adapter_config.json)")
    try:
        meta = json.loads(read_text_file(path))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({type(exc).__name__}: {str(exc)[:160]})") from None
    if isinstance(meta, dict) and meta.get("format") == FORMAT:
        check_adapter_fields(meta, path)  # one line naming a field of the wrong type, before any is used
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        got = (f"{meta.get('format')!r} v{meta.get('format_version')}" if isinstance(meta, dict)
               else type(meta).__name__)
        raise ConfigError(
            f"{path}: format {got} is not a visionpeft adapter this version reads (v<={FORMAT_VERSION})"
        )
    return meta


def load_adapter(
    model: Any,
    directory: str | Path,
    spec: ModelSpec | None = None,
    ignore_fingerprint: bool = False,
    ignore_identity: bool = False,
) -> TrainabilityPlan:
    """Apply the recorded strategies to a fresh base ``model`` and load the adapter tensors. All or nothing.

    ``directory`` may also be an HF PEFT adapter (a ``save_pretrained`` folder or a Hub repo id): it loads as exact
    visionpeft strategies, names and shapes checked (:func:`visionpeft.peft_format.load_peft_adapter`).

    (``visionpeft.load_adapter`` is :func:`visionpeft.adapters.load_adapter`, which adds named adapters.)

    Checked before the tensors load, each refusal naming what differs (:class:`AdapterMismatchError`):
    the strategies in ``adapter.json`` (with the per-layer ranks a budget chose, ``plan.resolved``) against
    those the tensors were saved with; the base identity
    (``spec.name``, e.g. ``timm:tf_efficientnet_lite0``) and module structure (classes and settings such as
    conv padding); the exact set and shapes of the adapter tensors against what the strategies create; the
    fingerprint of the frozen base weights. On any failure the model is left exactly as it was.

    Args:
        ignore_fingerprint: load even if the frozen base weights differ from those the adapter was
            trained on (e.g. a re-exported copy of the same checkpoint).
        ignore_identity: load even if the base model's name or module structure differs (only when you
            know both compute the same function, e.g. a renamed copy of the model class). Missing keys and
            shape mismatches are always refused.
    """
    refuse_ddp(model, "load_adapter")
    if looks_like_peft(directory) and not (Path(directory) / CONFIG_NAME).is_file():
        return load_peft_adapter(model, directory, spec)
    directory = Path(directory)
    meta = read_adapter_config(directory)
    tensors, header = _read_tensors(directory)
    _check_recorded_strategies(meta, header, directory)
    root = unwrap(model)
    if spec is None:
        from .backends import spec_for

        spec = spec_for(root)
    if not ignore_identity:
        _check_identity(spec, meta, directory)
    with atomic(root):
        # Per-layer ranks a budget chose (maybe from training data) are taken as recorded, never solved again.
        recorded = meta.get("plan", {}).get("resolved") if isinstance(meta.get("plan"), dict) else None
        plan = apply(root, meta["strategies"], spec, resolved=recorded)
        _check_keys(root, plan, tensors, meta, directory)
        if not ignore_identity:
            _check_structure(root, meta, directory)
        if not ignore_fingerprint:
            _check_fingerprint(root, tensors, meta, directory)
        sd = root.state_dict()
        with torch.no_grad():
            for k, v in tensors.items():
                sd[k].copy_(v)
    return plan


def _read_tensors(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise ConfigError(f"{weights}: missing; the adapter directory is incomplete")
    try:
        with safe_open(str(weights), framework="pt") as f:
            header = f.metadata() or {}
        return load_file(str(weights)), header
    except Exception as exc:  # a torn or foreign file: safetensors raises its own error types
        raise ConfigError(f"{weights}: not a readable safetensors file ({exc}); the adapter is empty, truncated or "
                          "damaged: re-run the training or restore the file") from None


def _check_recorded_strategies(meta: dict, header: dict[str, str], directory: Path) -> None:
    """``adapter.json``'s strategies must be those the tensors were saved with (rank, alpha, targets ...)."""
    if "strategies" not in header:
        return  # written before the header recorded them: the key and shape checks still apply
    saved = json.loads(header["strategies"])
    recorded = meta["strategies"]
    if json.dumps(saved, sort_keys=True) == json.dumps(recorded, sort_keys=True):
        return
    diffs = [f"{len(recorded)} strategies in {CONFIG_NAME} vs {len(saved)}"] if len(saved) != len(recorded) else []
    for i, (a, b) in enumerate(zip(recorded, saved)):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                diffs.append(f"strategies.{i}.{key}: {a.get(key)!r} in {CONFIG_NAME}, {b.get(key)!r} when saved")
    raise AdapterMismatchError(
        f"{directory}: {CONFIG_NAME} does not describe the tensors in {WEIGHTS_NAME}: {'; '.join(diffs[:5])}. "
        "The files come from different saves (or adapter.json was edited): restore the matching pair."
    )


def _check_identity(spec: ModelSpec, meta: dict, directory: Path) -> None:
    want = meta["base"].get("name")
    if want is not None and want != spec.name:
        raise AdapterMismatchError(
            f"{directory}: the adapter was trained on base {want!r}, this model is {spec.name!r}. The outputs "
            "would differ even where the weights fit (e.g. TF 'same' padding in tf_efficientnet_* vs "
            f"efficientnet_*); build {want!r}, or pass ignore_identity=True if you know both compute the same."
        )


def _check_structure(root: nn.Module, meta: dict, directory: Path) -> None:
    want = meta["base"].get("structure")
    if not want:
        return  # adapters saved before the structure was recorded
    have = structure_signature(root)
    if have["sha256"] == want["sha256"]:
        return
    ref, cur = want["modules"], have["modules"]
    kinds = [f"{k}: {ref[k].split('|')[0]} vs {cur[k].split('|')[0]}" for k in ref
             if k in cur and ref[k].split("|")[0] != cur[k].split("|")[0]]
    settings = [k for k in ref if k in cur and ref[k] != cur[k] and ref[k].split("|")[0] == cur[k].split("|")[0]]
    only_ref, only_cur = [k for k in ref if k not in cur], [k for k in cur if k not in ref]
    problems = _listed([
        ("modules of another class (adapter vs model)", kinds),
        ("modules with other settings (stride, padding, eps, pooling...)", settings),
        ("modules missing", only_ref),
        ("unexpected modules", only_cur),
    ])
    raise AdapterMismatchError(
        f"{directory}: the model's structure differs from the base the adapter was trained on "
        f"({meta['base'].get('name')!r}): {problems}. Build the same model (name and arguments), or pass "
        "ignore_identity=True if you know both compute the same."
    )


def _check_keys(
    root: nn.Module, plan: TrainabilityPlan, tensors: dict[str, torch.Tensor], meta: dict, directory: Path
) -> None:
    sd = root.state_dict()
    expected = set(adapter_keys(sd, plan))
    missing = [k for k in tensors if k not in sd]
    absent = sorted(k for k in expected if k not in tensors)
    shapes = [
        f"{k}: adapter {tuple(v.shape)} vs model {tuple(sd[k].shape)}"
        for k, v in tensors.items()
        if k in sd and sd[k].shape != v.shape
    ]
    problems = _listed([
        ("adapter tensors have no place in the model", missing),
        ("shape mismatches", shapes),
        ("tensors the recorded strategies train are not in the adapter", absent),
    ])
    if problems:
        raise AdapterMismatchError(
            f"{directory}: adapter does not fit this model (adapter base: {meta['base'].get('name')!r}): "
            f"{problems}. Build the base model the adapter was trained on (same architecture and number of "
            "classes), with the adapter.json saved alongside these tensors."
        )


def _listed(groups: list[tuple[str, list[str]]]) -> str:
    """``"2 shape mismatches ['a: ...', ...]; 1 missing ['b']"`` for the non-empty groups only."""
    return "; ".join(f"{len(items)} {what} {items[:5]}" for what, items in groups if items)


def _check_fingerprint(root: nn.Module, tensors: dict[str, torch.Tensor], meta: dict, directory: Path) -> None:
    want = meta["base"]
    have = base_fingerprint(root, tensors)
    if have["sha256"] == want["sha256"]:
        return
    ref, cur = want.get("tensors", {}), have["tensors"]
    only_ref = [k for k in ref if k not in cur]
    only_cur = [k for k in cur if k not in ref]
    differ = [k for k in ref if k in cur and ref[k] != cur[k]]
    problems = _listed([("tensors differ", differ), ("missing", only_ref), ("unexpected", only_cur)])
    raise AdapterMismatchError(
        f"{directory}: the base weights differ from those the adapter was trained on "
        f"(base {want.get('name')!r}): {problems}. Load the same base checkpoint, or pass "
        "ignore_fingerprint=True if you know the weights are equivalent."
    )
