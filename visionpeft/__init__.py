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

    yolo = YOLO("yolo11n.pt")                         # Ultralytics: apply to the YOLO object, then its own train()
    visionpeft.apply(yolo, [{"method": "lora", "rank": 8}, {"method": "head"}])
    yolo.train(data="data.yaml", epochs=20)           # trains the adapters (docs/detection.md, "From Python")

The public names are imported on first use (PEP 562): ``import visionpeft`` and the ``visionpeft`` command start
without importing torch, so ``visionpeft --help`` and error messages appear at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AdapterMismatchError,
    ConfigError,
    PlanViolationError,
    TargetNotFoundError,
    VisionPeftError,
)

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ below imports on first use
    from .adapter_io import save_adapter
    from .adapters import active_adapter, list_adapters, load_adapter, set_adapter
    from .api import apply, get_plan, merge
    from .params import format_parameter_report, parameter_report
    from .plan import TrainabilityPlan
    from .spec import ModelSpec, TokenSpec
    from .strategies.importance import GradientProbe
    from .tasks.ultralytics.trainer import (
        PeftClassificationTrainer,
        PeftDepthTrainer,
        PeftDetectionTrainer,
        PeftOBBTrainer,
        PeftPoseTrainer,
        PeftRTDETRTrainer,
        PeftSegmentationTrainer,
        PeftSemanticSegmentationTrainer,
        trainer_for,
    )

__version__ = "0.1.0"

#: public name -> the submodule that defines it (each needs torch).
_LAZY: dict[str, str] = {
    "load_adapter": "adapters", "save_adapter": "adapter_io",
    "active_adapter": "adapters", "list_adapters": "adapters", "set_adapter": "adapters",
    "apply": "api", "get_plan": "api", "merge": "api",
    "format_parameter_report": "params", "parameter_report": "params",
    "TrainabilityPlan": "plan",
    "ModelSpec": "spec", "TokenSpec": "spec",
    "GradientProbe": "strategies.importance",
    # Ultralytics' trainer of each task with visionpeft strategies (imports Ultralytics on first use):
    # YOLO(...).train(trainer=visionpeft.PeftDetectionTrainer.configure([...]), data=...)
    **{name: "tasks.ultralytics.trainer" for name in (
        "PeftDetectionTrainer", "PeftSegmentationTrainer", "PeftPoseTrainer", "PeftOBBTrainer",
        "PeftClassificationTrainer", "PeftSemanticSegmentationTrainer", "PeftDepthTrainer", "PeftRTDETRTrainer",
        "trainer_for")},
}

__all__ = [
    "AdapterMismatchError",
    "ConfigError",
    "GradientProbe",
    "ModelSpec",
    "PeftClassificationTrainer",
    "PeftDepthTrainer",
    "PeftDetectionTrainer",
    "PeftOBBTrainer",
    "PeftPoseTrainer",
    "PeftRTDETRTrainer",
    "PeftSegmentationTrainer",
    "PeftSemanticSegmentationTrainer",
    "PlanViolationError",
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
    "trainer_for",
]


def __getattr__(name: str) -> Any:
    """Import a public name's submodule on first access and cache the name in this module."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'visionpeft' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
