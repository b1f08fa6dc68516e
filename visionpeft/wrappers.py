"""The model inside the wrappers users hand to visionpeft's entry points.

Every public entry (``apply``, ``save_adapter``, ``load_adapter``, ``merge``, ``parameter_report``,
``set_adapter``, ``get_plan`` ...) works on the plain network, whatever it is wrapped in:

- ``torch.compile``'s ``OptimizedModule`` (``._orig_mod``): its ``state_dict()`` keys carry ``_orig_mod.`` while
  attribute access forwards to the original, so code that found the plan through attributes and selected
  tensors by state-dict name selected nothing (an empty adapter file);
- ``DistributedDataParallel`` / ``DataParallel`` (``.module``, keys prefixed ``module.``);
- timm's ``ModelEmaV2`` / ``ModelEmaV3`` and torch's own EMA / SWA wrapper ``torch.optim.swa_utils.AveragedModel``
  (``.module``: the averaged copy) and timm's ``ModelEma`` / Ultralytics' ``ModelEMA`` (plain objects holding the
  averaged copy in ``.ema``);
- Ultralytics' ``YOLO`` / ``RTDETR`` ... objects (``.model``: the network).

Wrappers nest (``torch.compile(DDP(model))``), so they are peeled until none is left. Nothing here imports torch's
compiler, timm or Ultralytics: wrappers are recognised by the attribute that holds the inner model.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim.swa_utils import AveragedModel

from .errors import ConfigError

__all__ = ["unwrap", "wrapper_chain", "is_ddp", "refuse_ddp"]

_MAX_DEPTH = 16


def _ultralytics_model(obj: Any) -> bool:
    """An Ultralytics ``Model`` (``YOLO``, ``RTDETR``, ...): an nn.Module whose ``.model`` is the network."""
    return any(c.__name__ == "Model" and c.__module__.startswith("ultralytics") for c in type(obj).__mro__) or \
        type(obj).__name__ in {"YOLO", "Model"}


def _inner(obj: Any) -> Any | None:
    """The object ``obj`` wraps, or ``None`` when ``obj`` is no wrapper."""
    if isinstance(obj, nn.Module):
        if "_orig_mod" in obj._modules:  # torch.compile
            return obj._modules["_orig_mod"]
        if isinstance(obj, nn.parallel.DistributedDataParallel | nn.DataParallel):
            return obj.module
        if isinstance(obj, AveragedModel) or type(obj).__name__.startswith("ModelEma"):
            inner = obj._modules.get("module")  # torch AveragedModel (EMA / SWA), timm ModelEmaV2 / V3
            if isinstance(inner, nn.Module):
                return inner
        inner = obj._modules.get("model")
        if _ultralytics_model(obj) and isinstance(inner, nn.Module):
            return inner
        return None
    ema = getattr(obj, "ema", None)  # Ultralytics ModelEMA, timm ModelEma (v1): plain objects
    return ema if isinstance(ema, nn.Module) else None


def wrapper_chain(model: Any) -> list[Any]:
    """``model`` and every object inside it down to the plain network (the last item)."""
    chain = [model]
    while len(chain) <= _MAX_DEPTH and (inner := _inner(chain[-1])) is not None:
        chain.append(inner)
    return chain


def unwrap(model: Any) -> nn.Module:
    """The ``nn.Module`` to adapt inside ``model``'s wrappers (see the module docstring)."""
    inner = wrapper_chain(model)[-1]
    if isinstance(inner, nn.Module):
        return inner
    raise TypeError(f"expected a torch nn.Module (or a wrapper of one: torch.compile, DDP, an EMA, an Ultralytics "
                    f"YOLO object), got {type(model).__name__}")


def is_ddp(model: Any) -> bool:
    """Whether a ``DistributedDataParallel`` wrapper is among ``model``'s wrappers."""
    return any(isinstance(m, nn.parallel.DistributedDataParallel) for m in wrapper_chain(model))


def refuse_ddp(model: Any, what: str) -> None:
    """Refuse to change the parameters of a model inside ``DistributedDataParallel``.

    DDP registers the parameters (and their gradient hooks) when it is built: tensors added or removed later
    (LoRA matrices, a merge) would train without being averaged across processes, silently. Raises
    :class:`~visionpeft.errors.ConfigError` naming ``what``.
    """
    if is_ddp(model):
        raise ConfigError(f"{what}: the model is wrapped in DistributedDataParallel, which registered its parameters "
                          "when it was built and would not see the ones this adds or removes; call it on the module "
                          "(ddp.module) before wrapping, then wrap it again")
