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
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .api import apply, get_state, unwrap
from .checkpoint import atomic_write
from .errors import AdapterMismatchError, ConfigError
from .plan import TrainabilityPlan
from .spec import ModelSpec

FORMAT = "visionpeft-adapter"
FORMAT_VERSION = 1
WEIGHTS_NAME = "adapter.safetensors"
CONFIG_NAME = "adapter.json"


def adapter_tensors(model: nn.Module, plan: TrainabilityPlan) -> dict[str, torch.Tensor]:
    """Trainable tensors plus BatchNorm statistics the plan lets change, as CPU copies."""
    sd = model.state_dict(keep_vars=True)
    keys = [k for k in sd if k in plan.trainable] + [k for k in plan.bn_buffers() if k in sd]
    # clone(): safetensors refuses tensors that share storage.
    return {k: sd[k].detach().to("cpu").contiguous().clone() for k in dict.fromkeys(keys)}


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


def save_adapter(model: Any, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``adapter.safetensors`` and ``adapter.json`` into ``directory`` (created); returns it."""
    root = unwrap(model)
    state = get_state(root)
    if state is None:
        raise ConfigError("save_adapter: the model has no visionpeft strategies applied (visionpeft.apply)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = adapter_tensors(root, state.plan)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "strategies": [c.model_dump(mode="json") for c in state.configs],
        "base": {"backend": state.spec.backend, "name": state.spec.name, **base_fingerprint(root, tensors)},
        "plan": {k: v for k, v in state.plan.to_dict().items() if k not in {"trainable", "bn_modes"}},
        "adapter_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "versions": _versions(),
        "extra": extra or {},
    }
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": FORMAT}))
    atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    return directory


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """Parse and sanity-check ``adapter.json`` in ``directory``."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{path}: no adapter config here; expected a directory written by save_adapter")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({type(exc).__name__}: {str(exc)[:160]})") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{path}: expected a JSON object written by save_adapter, got {type(meta).__name__}")
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise ConfigError(
            f"{path}: format {meta.get('format')!r} v{meta.get('format_version')} is not a visionpeft "
            f"adapter this version reads (v<={FORMAT_VERSION})"
        )
    return meta


def read_adapter_tensors(path: Path) -> dict[str, torch.Tensor]:
    """``adapter.safetensors`` as tensors; a damaged or foreign file is one :class:`ConfigError` naming it."""
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable safetensors file ({exc}); the adapter is empty, truncated or "
                          "damaged: re-run the training or restore the file") from None


def load_adapter(
    model: Any, directory: str | Path, spec: ModelSpec | None = None, ignore_fingerprint: bool = False
) -> TrainabilityPlan:
    """Apply the recorded strategies to a fresh base ``model`` and load the adapter tensors.

    Args:
        ignore_fingerprint: load even if the frozen base weights differ from those the adapter was
            trained on (e.g. a re-exported copy of the same checkpoint). Missing keys and shape mismatches
            are always refused.
    """
    directory = Path(directory)
    meta = read_adapter_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise ConfigError(f"{weights}: missing; the adapter directory is incomplete")
    tensors = read_adapter_tensors(weights)
    root = unwrap(model)
    plan = apply(root, meta["strategies"], spec)
    _check_keys(root, tensors, meta, directory)
    if not ignore_fingerprint:
        _check_fingerprint(root, tensors, meta, directory)
    sd = root.state_dict()
    with torch.no_grad():
        for k, v in tensors.items():
            sd[k].copy_(v)
    return plan


def _check_keys(root: nn.Module, tensors: dict[str, torch.Tensor], meta: dict, directory: Path) -> None:
    sd = root.state_dict()
    missing = [k for k in tensors if k not in sd]
    shapes = [
        f"{k}: adapter {tuple(v.shape)} vs model {tuple(sd[k].shape)}"
        for k, v in tensors.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if missing or shapes:
        raise AdapterMismatchError(
            f"{directory}: adapter does not fit this model (adapter base: {meta['base']['name']!r}). "
            f"{len(missing)} adapter tensors have no place in the model {missing[:5]}; "
            f"{len(shapes)} shape mismatches {shapes[:5]}. Build the base model the adapter was trained "
            "on (same architecture and number of classes)."
        )


def _check_fingerprint(root: nn.Module, tensors: dict[str, torch.Tensor], meta: dict, directory: Path) -> None:
    want = meta["base"]
    have = base_fingerprint(root, tensors)
    if have["sha256"] == want["sha256"]:
        return
    ref, cur = want.get("tensors", {}), have["tensors"]
    only_ref = [k for k in ref if k not in cur]
    only_cur = [k for k in cur if k not in ref]
    differ = [k for k in ref if k in cur and ref[k] != cur[k]]
    raise AdapterMismatchError(
        f"{directory}: the base weights differ from those the adapter was trained on "
        f"(base {want['name']!r}): {len(differ)} tensors differ {differ[:5]}, {len(only_ref)} missing "
        f"{only_ref[:5]}, {len(only_cur)} unexpected {only_cur[:5]}. Load the same base checkpoint, or pass "
        "ignore_fingerprint=True if you know the weights are equivalent."
    )
