"""Backends: the only code that knows timm and Ultralytics.

A backend (:class:`Backend`) builds a model from what a recipe names, describes it to the strategies
(:class:`~visionpeft.spec.ModelSpec`), gives its preprocessing, and writes a merged model in its own format.
:data:`BACKENDS` lists them (imported lazily); :func:`backend_for` / :func:`spec_for` pick one by the model's
class, :func:`backend_named` by name (an engine's ``backend`` in :mod:`visionpeft.engines`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import nn

from ..spec import ModelSpec

__all__ = ["Backend", "BACKENDS", "backend_named", "backend_for", "spec_for", "generic_spec"]


@runtime_checkable
class Backend(Protocol):
    """What a backend provides to the engines (see ``docs/architecture.md``: adding a backend).

    Every method is called by the engines: ``build_model`` / ``spec`` / ``data_config`` when the classification
    runner builds its base model, ``spec`` through :func:`spec_for` on every ``apply``, ``export_merged`` by
    ``visionpeft merge`` of either task (and for the Ultralytics trainer's ``weights/merged.pt``).
    :func:`backend_for` matches a model to a backend by the top-level package of its class, which is the
    backend's ``name``.

    Attributes:
        name: the backend's name (``timm``, ``ultralytics``), also the package its model classes come from.
    """

    name: str

    def build_model(self, source: str | Path, **kwargs: Any) -> nn.Module:
        """The model ``source`` names (timm name / Ultralytics ``.pt`` or yaml), float32, eval mode."""
        ...

    def spec(self, model: nn.Module) -> ModelSpec:
        """Structure by role: head, blocks, default targets, always-frozen parameters."""
        ...

    def data_config(self, model: nn.Module) -> dict[str, Any]:
        """The preprocessing the model's weights expect (input size, mean/std...)."""
        ...

    def export_merged(self, model: nn.Module, out: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write a merged (plain) model to ``out`` in the backend's own format, loadable without visionpeft."""
        ...


#: backend name -> ``"module:attribute"`` of its :class:`Backend` object.
BACKENDS: dict[str, str] = {
    "timm": "visionpeft.backends.timm:BACKEND",
    "ultralytics": "visionpeft.backends.ultralytics:BACKEND",
}


def backend_named(name: str) -> Backend:
    """The backend registered as ``name`` (``ConfigError`` when unknown)."""
    from ..engines import load_attr
    from ..errors import ConfigError

    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; available: {sorted(BACKENDS)}")
    return load_attr(BACKENDS[name], f"backend {name!r}")


def backend_for(model: nn.Module) -> Backend | None:
    """The backend whose package defines ``model``'s class (``None``: a plain ``nn.Module``)."""
    root = type(model).__module__.split(".", 1)[0]
    return backend_named(root) if root in BACKENDS else None


def spec_for(model: nn.Module) -> ModelSpec:
    """The :class:`ModelSpec` of ``model``: timm and Ultralytics models get their backend's spec."""
    backend = backend_for(model)
    return backend.spec(model) if backend is not None else generic_spec(model)


def generic_spec(model: nn.Module) -> ModelSpec:
    """Spec for any ``nn.Module``: blocks are its top-level children; the head is a ``head``/``fc``/
    ``classifier`` attribute or a final Linear. No stem or token blocks are known, so the derived defaults
    stay broad (:mod:`visionpeft.strategies.roles`: every Linear and Conv2d). ``lora_exclude`` is set to the
    head (an override): a plain module's classifier is sized for the dataset, so adapters stay out of it even
    when a recipe names it among its targets, as with the timm backend.
    """
    from ..strategies.roles import with_defaults

    children = list(model.named_children())
    head: tuple[str, ...] = ()
    for attr in ("head", "fc", "classifier"):
        if isinstance(getattr(model, attr, None), nn.Module):
            head = (attr,)
            break
    else:
        if children and isinstance(children[-1][1], nn.Linear):
            head = (children[-1][0],)
    spec = ModelSpec(
        backend="generic",
        name=type(model).__name__,
        head=head,
        blocks=tuple(n for n, _ in children),
        lora_exclude=head,
    )
    return with_defaults(model, spec)
