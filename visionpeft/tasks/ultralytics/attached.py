"""``yolo.train(...)`` after ``visionpeft.apply(yolo, ...)``: the YOLO object trains exactly the plan.

Ultralytics' ``Model.train`` rebuilds the network through its trainer's ``get_model`` and copies tensors by name
("Transferred 371/427 items"): adapters put into ``yolo.model`` beforehand would be dropped and the run would be a
plain one. So when :func:`visionpeft.apply` (or :func:`visionpeft.load_adapter`) adapts the network of an
Ultralytics ``Model`` object (``YOLO``, ``RTDETR``...: passed as the object or as its ``.model``), :func:`prepare`
keeps a copy of the plain network and gives that object its own ``train``:

* while the network is adapted, ``yolo.train(data=..., epochs=...)`` is Ultralytics' ``Model.train`` with
  ``trainer=`` the visionpeft trainer of the object's task (:func:`.trainer.trainer_for`) configured with the
  model's strategies and the model itself (:class:`.trainer_model.AdaptedSource`): Ultralytics builds the network
  for the data and transfers the plain base into it, the strategies are applied as a fresh run applies them, and
  every tensor of the adapted model whose name and shape match is copied in (adapters, a trained head, BatchNorm
  statistics). The run writes what ``visionpeft train`` writes (``adapter/``, ``weights/merged.pt``,
  ``metrics.json``, ``recipe.yaml``...), and afterwards ``yolo.model`` is the trained, adapted best model;
* once merged (:func:`visionpeft.merge`) or with no named adapter active, it is Ultralytics' ``train`` unchanged;
* what cannot be exact is refused before any data is read, in one line: ``trainer=`` (another trainer would build
  its own model), ``resume=``, ``pretrained=``, ``freeze=`` (a strategy instead), several data sets; a multi-GPU
  ``device`` is refused by the trainer before the first batch.

The object is found from the network it holds (``gc.get_referrers``: the object's module dict that holds it as
``model``), so ``visionpeft.apply(yolo.model, ...)`` is covered too. A network put into a YOLO object only after
it was adapted is not: apply to the object (or its ``.model``) in place.
"""

from __future__ import annotations

import copy
import gc
import types
from collections.abc import Callable
from typing import Any

from torch import nn

from ... import api
from ...errors import ConfigError

__all__ = ["prepare", "owner_of", "BASE_ATTR"]

#: Attribute of the YOLO object holding the plain network it held when it was adapted.
BASE_ATTR = "_visionpeft_base"


def owner_of(root: nn.Module) -> Any | None:
    """The Ultralytics ``Model`` object (``YOLO``, ``RTDETR``...) whose ``.model`` is ``root``, else ``None``."""
    from ultralytics.engine.model import Model

    def holding(value: Any, key: str) -> list[Any]:  # the dicts (or objects) holding ``value`` under ``key``
        return [r for r in gc.get_referrers(value) if (r.get(key) if isinstance(r, dict) else None) is value
                or (isinstance(r, Model) and r.__dict__.get(key) is value)]

    for modules in holding(root, "model"):  # the object's module dict ...
        for ref in holding(modules, "_modules"):  # ... held by the object, or by its __dict__
            owners = [ref] if isinstance(ref, Model) else [o for o in gc.get_referrers(ref)
                                                             if isinstance(o, Model) and o.__dict__ is ref]
            if owners:
                return owners[0]
    return None


def prepare(root: nn.Module) -> Callable[[], None] | None:
    """Called by :func:`visionpeft.apply` before it adapts ``root``: ``None`` unless ``root`` is the network of an
    Ultralytics ``Model`` object; else a function to call once the adaptation succeeded, which gives the object its
    ``train`` (a copy of the plain ``root`` is taken now)."""
    owner = owner_of(root)
    if owner is None:
        return None
    from ...adapters import BANK_ATTR

    bank = getattr(root, BANK_ATTR, None)  # named adapters: the copy needs the network, not the bank
    base = copy.deepcopy(root, {id(bank): None} if bank is not None else {})

    def attach() -> None:
        # The object's __dict__, not setattr: nn.Module.__setattr__ would register the copy as a submodule.
        owner.__dict__[BASE_ATTR] = base
        owner.__dict__["train"] = types.MethodType(train, owner)

    return attach


def _refuse(trainer: Any, kwargs: dict[str, Any]) -> None:
    """What cannot train the adapted model exactly: one line each, before Ultralytics reads anything."""
    how = "visionpeft.apply(YOLO(...), [...]) on a plain model, or 'visionpeft train RECIPE'"
    if trainer is not None:
        raise ConfigError("yolo.train(trainer=...): this YOLO object's model is adapted by visionpeft and trains "
                          "with visionpeft's trainer of its task; leave trainer= out, or pass trainer= to a YOLO "
                          "object holding a plain model")
    if kwargs.get("resume"):
        raise ConfigError("yolo.train(resume=...): a resume continues a run from its checkpoint, not this adapted "
                          "model: 'visionpeft resume RUN_DIR', or YOLO('RUN_DIR/weights/last.pt').train(resume=True, "
                          "trainer=visionpeft.PeftDetectionTrainer) (the trainer of the run's task)")
    if kwargs.get("pretrained", True) is not True:
        raise ConfigError(f"yolo.train(pretrained={kwargs['pretrained']!r}): the adapted model's base would be "
                          "replaced; load the weights before adapting (YOLO('model.yaml').load('weights.pt'), then "
                          "visionpeft.apply)")
    if kwargs.get("freeze"):
        raise ConfigError(f"yolo.train(freeze={kwargs['freeze']!r}) on an adapted model: list the freeze among the "
                          "strategies instead ({method: freeze, n: N} freezes exactly what Ultralytics' freeze=N "
                          f"does), i.e. {how}")
    if isinstance(kwargs.get("data"), (list, tuple)):
        raise ConfigError("yolo.train(data=[...]): an adapted model trains on one data set per train() call")


def train(yolo: Any, trainer: Any = None, **kwargs: Any) -> Any:
    """``yolo.train(...)`` of an adapted YOLO object (see the module docstring)."""
    from ...backends.ultralytics import is_rtdetr
    from .trainer import trainer_for
    from .trainer_model import AdaptedSource

    state = api.get_state(yolo.model)
    if state is None:  # merged, or no named adapter active: a plain model trains as Ultralytics trains it
        return type(yolo).train(yolo, trainer=trainer, **kwargs)
    _refuse(trainer, kwargs)
    source = AdaptedSource(yolo.model, yolo.__dict__[BASE_ATTR], list(state.plan.resolved))
    configured = trainer_for(yolo.task, rtdetr=is_rtdetr(yolo.model)).configure(list(state.configs), source=source)
    return type(yolo).train(yolo, trainer=configured, **kwargs)
