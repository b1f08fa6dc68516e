"""Training checkpoints: only trainable tensors + optimizer/scheduler state, written atomically.

``last.pt`` is rewritten every epoch (temp file + ``os.replace``, so a run killed mid-write keeps the
previous good file; the temporary a kill leaves behind is removed by the next write or resume) and read
with ``torch.load(weights_only=True)``: no pickled code, only tensors and
plain containers. ``best.safetensors`` holds the trainable tensors of the best epoch.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ConfigError

__all__ = ["STAGING_DIR", "atomic_save", "atomic_write", "remove_stale_temporaries", "save_training_state",
           "load_training_state", "save_tensors", "load_tensors",
           "trainable_state", "load_trainable_state", "check_trainable_state"]


#: Temporaries the writers here (and the Ultralytics trainer's staging) leave when killed mid-write.
_TEMP_PATTERNS = (".*.tmp", ".*.strip")
STAGING_DIR = ".saving"


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path`` atomically.

    A run killed mid-write keeps the previous good file (``os.replace`` is atomic on one filesystem); the
    temporary it leaves (``.NAME.XXXX.tmp``) is removed by the next write of ``path``. The file is created with
    mode 0666 minus the umask, like every other file a run writes (``tempfile.mkstemp`` would make it 0600, and
    the rename would keep that: adapters and checkpoints users share unreadable to their group).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = stat.S_IMODE(tmp.stat().st_mode)  # 0666 minus the umask, read without changing the umask
    try:
        write(str(tmp))
        os.chmod(tmp, mode)  # a writer may recreate the file with its own mode (safetensors: 0600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters escaped (a run or file name may contain ``[``)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Remove what a kill during a checkpoint write left in ``directory`` (temporaries, a staging folder).

    Called when a run resumes, before it writes again; returns what was removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for pattern in _TEMP_PATTERNS for p in directory.glob(pattern) if p.is_file()]
    for p in found:
        p.unlink(missing_ok=True)
    staging = directory / STAGING_DIR
    if staging.is_dir():
        shutil.rmtree(staging, ignore_errors=True)
        found.append(staging)
    return found


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through a temporary file in the same folder, then an atomic rename."""
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
    return path


def trainable_state(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the state-dict entries ``names`` (trainable tensors, BN statistics)."""
    sd = model.state_dict()
    return {n: sd[n].detach().to("cpu", copy=True).contiguous() for n in names}


def check_trainable_state(model: nn.Module, tensors: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Raise ``ConfigError`` unless every tensor has a place of the same shape in ``model``'s state dict."""
    sd = model.state_dict()
    missing = [k for k in tensors if k not in sd]
    shapes = [f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(sd[k].shape)} in the model"
              for k, v in tensors.items() if k in sd and sd[k].shape != v.shape]
    if missing or shapes:
        raise ConfigError(
            f"{where}: the checkpoint does not fit the model built from the recipe: {len(missing)} tensors have no "
            f"place in it {missing[:5]}, {len(shapes)} differ in shape {shapes[:3]}. The model, weights or "
            "strategies differ from those the checkpoint was trained with"
        )


def load_trainable_state(model: nn.Module, tensors: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Copy ``tensors`` into the matching state-dict entries of ``model`` (in place, no re-allocation).

    Raises:
        ConfigError: a tensor has no place in ``model`` or another shape (checked before anything is copied).
    """
    check_trainable_state(model, tensors, where)
    sd = model.state_dict()
    with torch.no_grad():
        for k, v in tensors.items():
            sd[k].copy_(v)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Atomic safetensors write."""
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(tensors, tmp))
    return path


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint not found")
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable safetensors file ({exc}); it is empty, truncated or "
                          "damaged") from None


def save_training_state(path: str | Path, *, model_tensors: dict[str, torch.Tensor], optimizer: Any,
                        scheduler: Any, epoch: int, extra: dict[str, Any]) -> Path:
    """Everything ``resume`` needs to continue after ``epoch`` (0-based, completed)."""
    state = {
        "epoch": epoch,
        "model": model_tensors,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": {"torch": torch.get_rng_state()},
        "extra": extra,
    }
    return atomic_save(state, path)


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a state written by :func:`save_training_state` (``weights_only=True``: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no checkpoint to resume from (was the run started with "
                          "train.save_every_epoch: true and did it finish at least one epoch?); nothing was changed")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupted or foreign file: say which
        size = path.stat().st_size
        raise ConfigError(f"{path}: unreadable checkpoint ({size} bytes; {load_error_summary(exc)}); "
                          "it cannot be resumed") from None
    if not isinstance(state, dict) or not {"epoch", "model", "optimizer"} <= set(state):
        raise ConfigError(f"{path}: not a visionpeft training checkpoint (expected epoch, model and optimizer state)")
    return state


def load_error_summary(exc: BaseException) -> str:
    """One short phrase for a failed ``torch.load(weights_only=True)`` (torch's own message spans lines)."""
    text = str(exc)
    blocked = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
    if blocked:
        return (f"refused: it references {blocked.group(1)}, an object outside tensors and plain data, and "
                "loading it could run code; only files written by visionpeft are read here")
    return f"{type(exc).__name__}: {' '.join(text.split())[:200]}"
