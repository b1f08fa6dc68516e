"""All-or-nothing changes to a model: record what visionpeft's entry points may change, restore it on failure.

:func:`visionpeft.apply`, :func:`visionpeft.merge` and :func:`visionpeft.load_adapter` change a model in place
(replaced submodules, added modules such as ``model.vpt``, hooks, ``requires_grad`` flags, the attached state,
adapter updates folded in by a merge: LoRA, DoRA, LoHa, LoKr and SSF layers). They run inside :func:`atomic`,
so a failure at any step leaves the model exactly as it was: same module objects in the same places, same hooks,
flags, attributes and weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["ModelSnapshot", "atomic", "mergeable_layers"]


class ModelSnapshot:
    """The structure of ``root`` at one moment: every module's attribute dictionary (submodules, parameters,
    buffers, hooks, plain attributes, training flag), every parameter's ``requires_grad``, and which mergeable
    adapter layers (:func:`mergeable_layers`: LoRA, DoRA, LoHa, LoKr, SSF) have their update merged into the base.

    Tensor *values* are not copied by default (cheap for any model size): visionpeft's entry points change
    values only through adapter merges. With ``adapter_weights=True`` (what :func:`visionpeft.merge` uses) the
    base weight and bias of every adapter layer are copied too, so a merge undone by :meth:`restore` is bit-exact
    (``w + d - d`` is not in floating point, and DoRA's ``m * V / ||V||`` even less); that costs one copy of the
    adapted layers' tensors while it runs.
    """

    def __init__(self, root: nn.Module, adapter_weights: bool = False) -> None:
        self._modules = [(m, dict(vars(m)), _containers(m)) for m in root.modules()]
        self._grads = [(p, p.requires_grad) for p in root.parameters()]
        self._layers = [
            (m, m.merged, _base_tensors(m), {k: t.detach().clone() for k, t in _base_tensors(m).items()}
             if adapter_weights else None)
            for m in mergeable_layers(root)
        ]

    def restore(self) -> None:
        """Put every recorded module, attribute, hook and flag back; undo adapter merges made since."""
        # Adapter layers first, while each still shows its live merged/folded state (and DoRA its cached norm).
        for layer, merged, tensors, data in self._layers:
            if data is not None:
                with torch.no_grad():
                    for key, t in tensors.items():
                        t.copy_(data[key])
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


def mergeable_layers(root: nn.Module) -> list[nn.Module]:
    """Every adapter layer of ``root`` that folds an update into its base layer's tensors."""
    from .strategies.adapter_layer import WeightAdapterLayer
    from .strategies.ssf import SSFLayer

    return [m for m in root.modules() if isinstance(m, WeightAdapterLayer | SSFLayer)]


def _base_tensors(layer: nn.Module) -> dict[str, torch.Tensor]:
    """The base layer's own weight and bias (the tensors a merge writes), as they are now."""
    base = layer.base_layer
    return {k: t for k in ("weight", "bias") if isinstance(t := getattr(base, k, None), torch.Tensor)}


def _containers(module: nn.Module) -> dict[str, dict | set]:
    """Copies of the module's dict/set attributes (``_modules``, ``_parameters``, the hook dicts ...)."""
    return {k: type(v)(v) if isinstance(v, set) else dict(v) for k, v in vars(module).items()
            if isinstance(v, dict | set)}


@contextmanager
def atomic(root: nn.Module, adapter_weights: bool = False) -> Iterator[ModelSnapshot]:
    """Run the ``with`` body; if it raises (anything, ``KeyboardInterrupt`` included), restore ``root``.

    ``adapter_weights``: copy the adapter layers' base tensors (see :class:`ModelSnapshot`).
    """
    snapshot = ModelSnapshot(root, adapter_weights)
    try:
        yield snapshot
    except BaseException:
        snapshot.restore()
        raise
