"""LoRA for Linear and Conv2d layers (grouped and depthwise convs included), mergeable into plain weights."""

from .layers import LoRAConv2d, LoRALayer, LoRALinear, adapter_param_count
from .strategy import LoRAConfig, LoRAStrategy, lora_layers, merge_in_place, merge_lora, unmerge

__all__ = [
    "LoRAConfig",
    "LoRAConv2d",
    "LoRALayer",
    "LoRALinear",
    "LoRAStrategy",
    "adapter_param_count",
    "lora_layers",
    "merge_in_place",
    "merge_lora",
    "unmerge",
]
