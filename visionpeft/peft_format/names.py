"""HF PEFT's file names, state-dict keys and name-matching rules, as visionpeft reads and writes them.

PEFT (``peft.utils.save_and_load``, checked against peft 0.21) stores an adapter as ``adapter_config.json`` plus
``adapter_model.safetensors`` whose keys are ``base_model.model.<module path>.<factor>`` with the adapter name
removed: ``lora_A.weight`` / ``lora_B.weight`` (LoRA's factors are ``nn.Linear`` / ``nn.Conv2d`` modules),
``lora_magnitude_vector`` (DoRA), ``hada_w1_a`` ... (LoHa), ``lokr_w1`` ... (LoKr), and for each module in
``modules_to_save`` its whole state dict (``base_model.model.head.weight``, buffers included).

Names match differently in PEFT (``peft.tuners.tuners_utils.check_target_module_exists``,
``peft.utils.other.get_pattern_key`` / ``_set_trainable``):

* ``target_modules`` as a list matches a module whose name *ends with* ``"." + entry`` (``"proj"`` also matches
  ``patch_embed.proj``); as a string it is a regex ``fullmatch``.
* ``rank_pattern`` / ``alpha_pattern`` keys match by ``re.match(rf"(.*\\.)?({key})$", name)``.
* ``modules_to_save`` entries match any module whose name ends with the entry (plain ``str.endswith``).

So visionpeft writes exact full names: ``target_modules`` as one anchored regex, pattern keys as ``^<escaped
name>`` (the ``^`` cannot match after a consumed ``(.*\\.)`` prefix), and refuses a ``modules_to_save`` name that
another module's name ends with.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = [
    "CONFIG_NAME", "WEIGHTS_NAME", "PICKLE_WEIGHTS_NAME", "PREFIX", "FACTORS", "PEFT_TYPES",
    "exact_targets", "exact_key", "pattern_value", "to_peft_key", "from_peft_key",
]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
PREFIX = "base_model.model."

#: Per visionpeft method: visionpeft parameter name on the wrapper -> PEFT's key suffix (after the module path).
FACTORS: dict[str, dict[str, str]] = {
    "lora": {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight"},
    "dora": {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight", "lora_magnitude": "lora_magnitude_vector"},
    "loha": {n: n for n in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")},
    "lokr": {n: n for n in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")},
}

#: visionpeft method -> PEFT's ``peft_type`` (DoRA is LoRA with ``use_dora``).
PEFT_TYPES = {"lora": "LORA", "dora": "LORA", "loha": "LOHA", "lokr": "LOKR"}


def exact_targets(names: Iterable[str]) -> str:
    """One regex that PEFT's ``re.fullmatch`` matches against exactly these module names."""
    return "(?:" + "|".join(re.escape(n) for n in names) + ")"


def exact_key(name: str) -> str:
    """A ``rank_pattern`` / ``alpha_pattern`` key that PEFT matches against ``name`` only."""
    return "^" + re.escape(name)


def pattern_value(patterns: Mapping[str, float], name: str, default: float) -> float:
    """The value PEFT takes for module ``name`` from ``rank_pattern`` / ``alpha_pattern`` (its first matching key,
    ``get_pattern_key``), else ``default``."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def to_peft_key(module: str, suffix: str) -> str:
    """``base_model.model.<module>.<suffix>`` (``module`` empty: the root)."""
    return PREFIX + (f"{module}.{suffix}" if module else suffix)


def from_peft_key(key: str) -> str | None:
    """The model-relative name of a PEFT key (``None`` when it lacks PEFT's ``base_model.model.`` prefix)."""
    return key[len(PREFIX):] if key.startswith(PREFIX) else None
