"""The strategy interface: a typed config plus an object that changes a model in place."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..spec import ModelSpec
from .region import Claims, FrozenRegion

if TYPE_CHECKING:
    from .importance import GradientProbe


class StrategyConfig(BaseModel):
    """Base of every strategy config: unknown keys are errors, values are immutable.

    Optimizer settings of the parameters this strategy owns (see :mod:`visionpeft.optim_settings`):

    Args:
        lr: learning rate of this strategy's parameters, overriding the recipe's ``optim.lr`` (classification)
            or Ultralytics' ``lr0`` (detection). ``None`` takes the recipe's value, else the method's documented
            default (:data:`visionpeft.optim_settings.DEFAULT_LR`). Set it in a compare so every method runs at
            a rate that suits it.
        weight_decay: decoupled weight decay of this strategy's parameters, overriding the recipe's value;
            biases, 1-D tensors and the model's ``no_weight_decay()`` tensors never decay.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    method: str
    # -- optimizer settings of the owned parameters (visionpeft.optim_settings)
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)

    def label(self) -> str:
        """A short human-readable name with the settings that matter (``lora r8``, ``freeze 10 blocks``).

        Shown in the plan text, the compare report and TensorBoard's HParams ``methods`` column.
        """
        return self.method


@dataclass
class ApplyContext:
    """Shared state while strategies are applied in order.

    Attributes:
        spec: the backend's description of the model.
        frozen: the one frozen region (every freeze form, ``spec.always_frozen``); strategies train nothing
            and add no adapters inside it. See :mod:`visionpeft.strategies.region`.
        claims: parameters earlier strategies made trainable, with their owner.
        bn_policy: BatchNorm policy for frozen parts (set by ``freeze``; ``eval`` by default).
        probe: training batches for importance scores (``allocation: importance`` of a budget), or ``None``
            (see :mod:`visionpeft.strategies.importance`).
        recorded: what a budget resolved earlier for the strategy being applied (per-layer ranks, VPT tokens;
            from a saved adapter or a resumed run); a budgeted strategy uses it instead of solving again.
            Set by :func:`visionpeft.apply` before each strategy.
    """

    spec: ModelSpec
    frozen: FrozenRegion = field(default_factory=FrozenRegion)
    claims: Claims = field(default_factory=Claims)
    bn_policy: str = "eval"
    probe: GradientProbe | None = None
    recorded: dict[str, Any] | None = None


@dataclass
class ApplyReport:
    """What one strategy did: parameters it made trainable, modules it added or replaced, what it resolved."""

    trainable: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: What a budget resolved (JSON): kept in the plan (``TrainabilityPlan.resolved``) and saved adapters.
    resolved: dict[str, Any] = field(default_factory=dict)


class Strategy(ABC):
    """One PEFT method. Subclasses set ``method`` and ``config_cls`` and implement :meth:`apply`.

    ``adds_trainables`` tells :func:`visionpeft.apply` whether the method trains something on top of a
    frozen base (LoRA, DoRA, LoHa, LoKr, SSF, AdaptFormer, VPT, head, BitFit, norm). When a recipe contains
    any such method, every base parameter not claimed by a strategy is frozen; otherwise (``freeze`` alone)
    the rest trains, as in Ultralytics' ``freeze=N``.
    """

    method: ClassVar[str]
    config_cls: ClassVar[type[StrategyConfig]]
    adds_trainables: ClassVar[bool] = True
    #: Module classes (and hook callables) this method puts into a model, which an Ultralytics checkpoint of the
    #: adapted model pickles: the checkpoint loader's allow-list (:mod:`visionpeft.backends.safe_load`) reads them.
    checkpoint_classes: ClassVar[tuple[Any, ...]] = ()
    #: ``False`` for methods that cannot be folded into plain weights (VPT); merge() then raises.
    mergeable: ClassVar[bool] = True

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config

    def check(self, model: nn.Module, ctx: ApplyContext) -> None:  # noqa: B027 - nothing to check by default
        """Validate the config against ``model`` without changing it (every pattern matches, the backend
        supports the method). :func:`visionpeft.apply` checks every entry before touching the model."""

    @abstractmethod
    def apply(self, model: nn.Module, ctx: ApplyContext) -> ApplyReport:
        """Change ``model`` in place; raise a clear error when the targets match nothing."""

    def merge(self, model: nn.Module) -> None:  # noqa: B027 - most strategies leave plain weights
        """Fold the strategy into plain weights so the model is the original architecture again."""
