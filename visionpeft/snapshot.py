"""All-or-nothing changes to a model: record what visionpeft's entry points may change, restore it on failure.

:func:`visionpeft.apply`, :func:`visionpeft.merge` and :func:`visionpeft.load_adapter` change a model in place
(replaced submodules, added modules such as ``model.vpt``, hooks, ``requires_grad`` flags, the attached state,
LoRA weights folded in by a merge). They run inside :func:`atomic`, so a failure at any step leaves the model
exactly as it was: same module objects in the same places, same hooks, flags, attributes and weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["ModelSnapshot", "atomic"]


class ModelSnapshot:
    """The structure of ``root`` at one moment: every module's attribute dictionary (submodules, parameters,
    buffers, hooks, plain attributes, training flag), every parameter's ``requires_grad``, and which LoRA
    layers have their update merged into the base weight.

    Tensor *values* are not copied by default (cheap for any model size): visionpeft's entry points change
    values only through LoRA merges. With ``lora_weights=True`` (what :func:`visionpeft.merge` uses) the base
    weight of every LoRA layer is copied too, so a merge undone by :meth:`restore` is bit-exact (``w + d - d``
    is not, in floating point); that costs one copy of the adapted layers' weights while it runs.
    """

    def __init__(self, root: nn.Module, lora_weights: bool = False) -> None:
        from .strategies.lora.layers import LoRALayer

        self._modules = [(m, dict(vars(m)), _containers(m)) for m in root.modules()]
        self._grads = [(p, p.requires_grad) for p in root.parameters()]
        self._lora = [
            (m, m.merged, m.base_layer.weight, m.base_weight.detach().clone() if lora_weights else None)
            for m in root.modules() if isinstance(m, LoRALayer)
        ]

    def restore(self) -> None:
        """Put every recorded module, attribute, hook and flag back; undo LoRA merges made since."""
        # LoRA first, while each layer still shows its live merged/folded state.
        for layer, merged, weight, data in self._lora:
            if data is not None:
                with torch.no_grad():
                    weight.copy_(data)
            elif layer.merged and not merged and not getattr(layer, "folded", False):
                layer.unmerge()
            elif merged and not layer.merged:
                layer.merge()
        for module, attrs, containers in self._modules:
            for key, saved in containers.items():
                live = attrs[key]
                live.clear()
                live.update(saved)
            for key in set(vars(module)) - set(attrs):
                delattr(module, key)
            vars(module).update(attrs)
        for p, flag in self._grads:
            p.requires_grad_(flag)


def _containers(module: nn.Module) -> dict[str, dict | set]:
    """Copies of the module's dict/set attributes (``_modules``, ``_parameters``, the hook dicts ...)."""
    return {k: type(v)(v) if isinstance(v, set) else dict(v) for k, v in vars(module).items()
            if isinstance(v, dict | set)}


@contextmanager
def atomic(root: nn.Module, lora_weights: bool = False) -> Iterator[ModelSnapshot]:
    """Run the ``with`` body; if it raises (anything, ``KeyboardInterrupt`` included), restore ``root``."""
    snapshot = ModelSnapshot(root, lora_weights)
    try:
        yield snapshot
    except BaseException:
        snapshot.restore()
        raise
