"""Backends: the only code that knows timm and Ultralytics. ``spec_for`` picks one by the model's class."""

from __future__ import annotations

from torch import nn

from ..spec import ModelSpec


def _module_root(model: nn.Module) -> str:
    return type(model).__module__.split(".", 1)[0]


def spec_for(model: nn.Module) -> ModelSpec:
    """The :class:`ModelSpec` of ``model``: timm and Ultralytics models get their backend's spec."""
    root = _module_root(model)
    if root == "timm":
        from .timm import timm_spec

        return timm_spec(model)
    if root == "ultralytics":
        from .ultralytics import ultralytics_spec

        return ultralytics_spec(model)
    return generic_spec(model)


def generic_spec(model: nn.Module) -> ModelSpec:
    """Spec for any ``nn.Module``: blocks are its top-level children; the head is a final Linear.

    Targets are matched by name pattern or module type (``"Conv2d"``, ``"Linear"``).
    """
    children = list(model.named_children())
    head: tuple[str, ...] = ()
    for attr in ("head", "fc", "classifier"):
        if isinstance(getattr(model, attr, None), nn.Module):
            head = (attr,)
            break
    else:
        if children and isinstance(children[-1][1], nn.Linear):
            head = (children[-1][0],)
    return ModelSpec(
        backend="generic",
        name=type(model).__name__,
        head=head,
        blocks=tuple(n for n, _ in children),
        lora_targets=("Linear", "Conv2d"),
        lora_exclude=head,
    )
