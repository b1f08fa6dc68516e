"""Loading Ultralytics ``.pt`` checkpoints without running code from the file.

An Ultralytics checkpoint is a pickle; by default Ultralytics unpickles it fully
(``torch.load(weights_only=False)``), so a crafted file that names one Ultralytics class plus any callable
(``os.system``, ...) runs that callable the moment it is loaded. visionpeft instead loads every Ultralytics
checkpoint - the recipe's ``model:``, ``params``, ``eval``, ``merge``, ``resume`` and the trainer's own loads -
through Ultralytics' restricted loading (``ultralytics.nn.tasks.torch_safe_load(safe_only=True)``: torch's
``weights_only=True`` unpickler with an allow-list of torch / Ultralytics model classes), extended with the
few visionpeft classes an adapted run checkpoint holds (:func:`visionpeft_globals`). Anything else in the file
is refused with one error line.

Opt-in for files you trust: set the environment variable ``VISIONPEFT_TRUST_PICKLE=1`` to unpickle fully
(e.g. a checkpoint holding custom classes from your own code). Never set it for files from others.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["TRUST_ENV", "trust_pickle", "restricted_loading", "load_checkpoint", "visionpeft_globals"]

#: Environment variable that allows full unpickling of Ultralytics checkpoints (files you trust only).
TRUST_ENV = "VISIONPEFT_TRUST_PICKLE"
_ULTRALYTICS_ENV = "ULTRALYTICS_SAFE_LOAD"
_KNOWN_PREFIXES = ("torch.", "ultralytics.", "visionpeft.", "collections.", "numpy.", "builtins.", "pathlib.")


def trust_pickle() -> bool:
    """Whether the user opted in to full unpickling (``VISIONPEFT_TRUST_PICKLE=1``), read at each call."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in {"1", "true", "yes"}


def visionpeft_globals() -> list[Any]:
    """The visionpeft objects an adapted checkpoint pickles, as their owners declare them: the adapted state, plan
    and spec (``CHECKPOINT_CLASSES`` of :mod:`visionpeft.state`, :mod:`visionpeft.plan`, :mod:`visionpeft.spec`),
    every strategy's config class and the module classes each strategy puts into a model
    (``Strategy.checkpoint_classes``: LoRA, DoRA, LoHa, LoKr and SSF layers, AdaptFormer's adapters and hook)."""
    from .. import plan, spec, state
    from ..strategies import registry

    methods = registry.available()
    configs = [registry.config_class(m) for m in methods]
    modules = [c for m in methods for c in registry.strategy_class(m).checkpoint_classes]
    return [*state.CHECKPOINT_CLASSES, *plan.CHECKPOINT_CLASSES, *spec.CHECKPOINT_CLASSES, *modules, *configs]


def _safe_load_class() -> Any:
    import ultralytics.nn.tasks as tasks

    safe = getattr(tasks, "_SafeLoad", None)
    if safe is None or not getattr(safe, "SUPPORTED", False) or not hasattr(tasks, "SAFE_LOAD"):
        import ultralytics

        raise ConfigError(
            f"ultralytics {ultralytics.__version__} (with this torch) has no restricted checkpoint loading, so loading "
            f"a .pt could run code from the file. Upgrade ultralytics, or set {TRUST_ENV}=1 for files you trust"
        )
    return tasks


@contextlib.contextmanager
def restricted_loading() -> Iterator[None]:
    """Within the block, every Ultralytics checkpoint load (also Ultralytics' own, in the trainer and its DDP
    workers) uses the allow-list; with ``VISIONPEFT_TRUST_PICKLE=1`` nothing changes."""
    if trust_pickle():
        yield
        return
    import torch

    tasks = _safe_load_class()
    torch.serialization.add_safe_globals(visionpeft_globals())
    old_flag, old_env = tasks.SAFE_LOAD, os.environ.get(_ULTRALYTICS_ENV)
    tasks.SAFE_LOAD = True
    os.environ[_ULTRALYTICS_ENV] = "1"  # DDP workers are new processes: Ultralytics reads it at import
    try:
        yield
    finally:
        tasks.SAFE_LOAD = old_flag
        if old_env is None:
            os.environ.pop(_ULTRALYTICS_ENV, None)
        else:
            os.environ[_ULTRALYTICS_ENV] = old_env


def refused_message(path: str | Path) -> str:
    """The one line for a checkpoint the allow-list refuses, naming what it references."""
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - only for the message
        names = []
    odd = sorted(n for n in names if not n.startswith(_KNOWN_PREFIXES))[:4]
    what = f" such as {odd}" if odd else ""
    return (f"{path}: refused to load: the checkpoint references objects outside the allow-list of model classes"
            f"{what}, and unpickling it could run code. Use a checkpoint saved by Ultralytics or visionpeft; if you "
            f"trust this file, set {TRUST_ENV}=1 to unpickle it fully")


def load_checkpoint(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """``ultralytics.nn.tasks.load_checkpoint`` under :func:`restricted_loading`: ``(model, checkpoint dict)``.

    Raises:
        ConfigError: a refused, damaged or foreign file, naming ``path``.
    """
    import pickle

    with restricted_loading():
        from ultralytics.nn.tasks import load_checkpoint as ultra_load

        try:
            return ultra_load(str(path))
        except pickle.UnpicklingError:
            raise ConfigError(refused_message(path)) from None
        except (TypeError, ModuleNotFoundError, AttributeError, RuntimeError, EOFError) as exc:
            text = " ".join(str(exc).split())
            if "outside the supported" in text or "Unsupported global" in text:
                raise ConfigError(refused_message(path)) from None
            raise ConfigError(f"{path}: Ultralytics could not load this checkpoint: {text[:300]}") from None
