"""Adapters of other libraries inside a model: found so that visionpeft never stacks its own on top of them.

HF PEFT wraps a model as ``PeftModel`` -> ``LoraModel`` (``base_model``) -> the original model (``model``) and
replaces each adapted layer by a tuner layer (``peft.tuners.lora.layer.Linear``, a ``BaseTunerLayer``) holding
the original as ``base_layer``; ``modules_to_save`` become ``ModulesToSaveWrapper``. visionpeft's own
targeting would see plain ``nn.Linear`` modules inside those wrappers and add a second adapter, silently: the
model would then compute PEFT's adapter plus visionpeft's, and neither library's files could describe it.

The check needs no import of peft: a module whose class comes from the ``peft`` package (``type(m).__module__``)
is PEFT's; when peft is already imported, subclasses of its ``BaseTunerLayer`` / ``PeftModel`` defined elsewhere
are found too (``sys.modules``, never an import).
"""

from __future__ import annotations

import sys

from torch import nn

from .errors import ConfigError

__all__ = ["foreign_adapter", "refuse_foreign"]


def _peft_classes() -> tuple[type, ...]:
    """PEFT's wrapper base classes, only if peft is imported already (this never imports it)."""
    found: list[type] = []
    for module, name in (("peft.tuners.tuners_utils", "BaseTunerLayer"), ("peft.tuners.tuners_utils", "BaseTuner"),
                         ("peft.peft_model", "PeftModel"), ("peft.utils.other", "AuxiliaryTrainingWrapper")):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def foreign_adapter(model: nn.Module) -> tuple[str, str] | None:
    """``(module name, class name)`` of the first HF PEFT wrapper in ``model`` (``"<root>"`` for the model
    itself), or ``None`` for a model without one."""
    classes = _peft_classes()
    for name, module in model.named_modules():
        cls = type(module)
        if cls.__module__.split(".")[0] == "peft" or (classes and isinstance(module, classes)):
            return name or "<root>", cls.__name__
    return None


def refuse_foreign(model: nn.Module, what: str) -> None:
    """Raise :class:`ConfigError` (one line, naming the wrapper and the two ways on) if ``model`` holds PEFT's
    adapter layers; ``what`` names the caller (``"apply"``, ``"load_adapter"``)."""
    hit = foreign_adapter(model)
    if hit is None:
        return
    name, cls = hit
    raise ConfigError(
        f"{what}: this model carries HF PEFT adapters ({cls} at {name}); visionpeft will not stack a second adapter "
        "on them. Either fold PEFT's adapter into the weights first (model = model.merge_and_unload()), or load that "
        "adapter through visionpeft instead: save it with model.save_pretrained(DIR) and call "
        "visionpeft.load_adapter(plain_base_model, DIR)"
    )
