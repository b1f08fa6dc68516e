"""Multi-GPU (DDP) support for :class:`~visionpeft.tasks.detection.trainer.PeftDetectionTrainer`.

With ``device=0,1`` Ultralytics' trainer does not train in the launching process: ``BaseTrainer.train``
writes a temporary script (``ultralytics.utils.dist.generate_ddp_file``) and runs it once per GPU through
``torch.distributed.run``. Each worker re-creates the trainer there. Two Ultralytics generations exist:

* 8.4+ pickles ``type(trainer)`` with cloudpickle. The class :meth:`PeftDetectionTrainer.configure` returns
  is not importable by name, so cloudpickle stores it by value, class attributes (strategies, run dir)
  included.
* 8.3 writes ``from <trainer.__module__> import <trainer.__class__.__name__>`` into the script. The
  configured subclass keeps the base class' module and name, so the worker imports the plain
  ``PeftDetectionTrainer``, which would fall back to its defaults.

For both, the launching trainer puts its settings into the environment variable :data:`ENV_VAR` (JSON)
while the workers start (child processes inherit it); a trainer class that was not configured reads them
back in ``__init__``. The variable is removed again when the launch returns, so later trainers in the same
process are not affected.

Inside each worker one more thing needs fixing: ``_setup_train`` wraps the model in
``DistributedDataParallel`` right after its freeze loop switched every parameter to trainable, so DDP's
gradient reducer would track (and all-reduce) every frozen tensor. :func:`rewrap_ddp` builds the wrapper
again, with the same settings, once the plan is enforced.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from collections.abc import Iterator
from typing import Any

from torch import nn

from ...errors import ConfigError

__all__ = ["ENV_VAR", "settings_from_env", "launch_env", "rewrap_ddp"]

#: Environment variable carrying a trainer's settings to the DDP workers Ultralytics launches.
ENV_VAR = "VISIONPEFT_DETECTION_TRAINER"

_KEYS = ("strategies", "run_dir", "tensorboard", "run_name")


def settings_from_env() -> dict[str, Any] | None:
    """The settings a launching trainer left in :data:`ENV_VAR`, or ``None`` when it is not set."""
    raw = os.environ.get(ENV_VAR)
    if not raw:
        return None
    try:
        settings = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{ENV_VAR}: not valid JSON ({exc}); unset it, it is written by visionpeft") from None
    # strategies None: an unconfigured trainer resuming (the workers take them from the checkpoint).
    if not isinstance(settings, dict) or not isinstance(settings.get("strategies", 0), list | type(None)):
        raise ConfigError(f"{ENV_VAR}: expected a JSON object with a 'strategies' list, got {raw[:200]!r}")
    unknown = sorted(set(settings) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{ENV_VAR}: unknown keys {unknown}; expected {list(_KEYS)}")
    return settings


@contextlib.contextmanager
def launch_env(settings: dict[str, Any]) -> Iterator[None]:
    """Set :data:`ENV_VAR` to ``settings`` for the duration of a DDP launch, then restore the old value."""
    previous = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = json.dumps({k: settings.get(k) for k in _KEYS}, default=str)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous


def rewrap_ddp(model: nn.Module) -> nn.Module:
    """A fresh ``DistributedDataParallel`` around ``model.module`` with ``model``'s settings.

    DDP decides at construction which parameters its reducer tracks (those with ``requires_grad``).
    Ultralytics wraps the model while every parameter is trainable; after the plan froze most of them,
    building the wrapper again makes DDP all-reduce only the trainable tensors and keeps it from waiting for
    gradients that never come (which fails outright with ``find_unused_parameters=False``). Returns
    ``model`` unchanged when it is not a DDP wrapper.
    """
    ddp_cls = nn.parallel.DistributedDataParallel
    if not isinstance(model, ddp_cls):
        return model
    kwargs: dict[str, Any] = {
        "device_ids": model.device_ids,
        "output_device": model.output_device,
        "dim": model.dim,
        "process_group": model.process_group,
        "find_unused_parameters": model.find_unused_parameters,
        "gradient_as_bucket_view": model.gradient_as_bucket_view,
        "static_graph": model.static_graph,
    }
    # torch 2.13 renamed broadcast_buffers to forward_sync_buffers (the old name warns).
    params = inspect.signature(ddp_cls.__init__).parameters
    sync = getattr(model, "forward_sync_buffers", getattr(model, "broadcast_buffers", True))
    kwargs["forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"] = sync
    # The old reducer's autograd hooks stay on the parameters until the wrapper is garbage-collected; with
    # both sets firing, backward fails ("marked as ready twice") or waits on the old wrapper's all-reduce.
    remove_hooks = getattr(model, "_remove_autograd_hooks", None)
    if callable(remove_hooks):
        remove_hooks()
    return ddp_cls(model.module, **kwargs)
