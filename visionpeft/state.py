"""The record visionpeft attaches to an adapted model (:class:`AdaptedState`), and reading it back.

Below the strategy entry points (:mod:`visionpeft.api`) and the checkpoint loader
(:mod:`visionpeft.backends.safe_load`), which both need it: an Ultralytics checkpoint of an adapted model pickles
this record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .wrappers import unwrap

if TYPE_CHECKING:
    from .plan import TrainabilityPlan
    from .spec import ModelSpec
    from .strategies.base import StrategyConfig

__all__ = ["STATE_ATTR", "AdaptedState", "get_state", "get_plan", "CHECKPOINT_CLASSES"]

STATE_ATTR = "_visionpeft_state"


@dataclass
class AdaptedState:
    """What visionpeft attaches to an adapted model (survives ``copy.deepcopy`` and pickling)."""

    configs: list[StrategyConfig]
    spec: ModelSpec
    plan: TrainabilityPlan


def get_state(model: Any) -> AdaptedState | None:
    """The adapted state of ``model``, or ``None`` for a plain model."""
    return getattr(unwrap(model), STATE_ATTR, None)


def get_plan(model: Any) -> TrainabilityPlan | None:
    """The trainability plan of an adapted model, or ``None``."""
    state = get_state(model)
    return state.plan if state else None


#: What checkpoints pickle from this module; checkpoints written before this module existed name the record
#: ``visionpeft.api.AdaptedState`` (its former place), read as this class.
CHECKPOINT_CLASSES: tuple[Any, ...] = (AdaptedState, (AdaptedState, "visionpeft.api.AdaptedState"))
