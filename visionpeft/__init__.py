"""visionpeft: freeze, LoRA (and DoRA, LoHa, LoKr), SSF, AdaptFormer and visual prompt tuning for timm classifiers
and Ultralytics detectors.

Typical use::

    import visionpeft
    plan = visionpeft.apply(model, [{"method": "lora", "rank": 8}, {"method": "head"}])
    print(plan)                      # who trains
    ...                              # train
    visionpeft.save_adapter(model, "out/adapter")
    merged = visionpeft.merge(model) # plain weights, original architecture

    visionpeft.load_adapter(base, "out/a", name="a")  # several adapters on one base model ...
    visionpeft.load_adapter(base, "out/b", name="b")
    visionpeft.set_adapter(base, "b")                 # ... switched without reloading it (None: the base)
"""

from __future__ import annotations

from .adapter_io import load_adapter, save_adapter
from .adapters import active_adapter, list_adapters, set_adapter
from .api import apply, get_plan, merge
from .errors import (
    AdapterMismatchError,
    ConfigError,
    PlanViolationError,
    TargetNotFoundError,
    VisionPeftError,
)
from .params import format_parameter_report, parameter_report
from .plan import TrainabilityPlan
from .spec import ModelSpec, PromptSpec, TokenSpec
from .strategies.importance import GradientProbe

__version__ = "0.1.0"

__all__ = [
    "AdapterMismatchError",
    "ConfigError",
    "GradientProbe",
    "ModelSpec",
    "PlanViolationError",
    "PromptSpec",
    "TargetNotFoundError",
    "TokenSpec",
    "TrainabilityPlan",
    "VisionPeftError",
    "active_adapter",
    "apply",
    "format_parameter_report",
    "get_plan",
    "list_adapters",
    "load_adapter",
    "merge",
    "parameter_report",
    "save_adapter",
    "set_adapter",
]
