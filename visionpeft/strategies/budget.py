"""Parameter budgets: per-layer ranks (``lora``, ``dora``, ``loha``) or VPT tokens from a fraction of the model.

``{method: lora, budget: 0.01}`` asks for adapters that train at most 1% of the model's parameters. What counts:
the adapter's own parameters (never the ``head`` strategy, which trains the classifier in full), as a share of
the adapted model, the way the trainability plan and every report count ``trainable %``::

    fraction = adapter / (model + adapter)        model: parameters when the strategy is applied

so a recipe with only the budgeted adapter reports ``trainable % <= 100 * budget``. ``fraction <= x`` means
``adapter <= floor(x * model / (1 - x))`` (:func:`budget_limit`).

Allocation (:func:`solve_ranks`):

* ``uniform`` (default): the largest rank ``r`` that fits with every target at ``r``; then, because ranks are
  integers, layers are raised one rank at a time (lowest rank first, the largest increase among equals) while the
  total still fits, so the fraction lands within ``[0.9 x, x]`` whenever the target layers are not too coarse.
* ``importance``: ranks proportional to each layer's importance per parameter, the mean absolute gradient of its
  weight over a few training batches (:mod:`visionpeft.strategies.importance`): ``r_i = floor(lambda * s_i)``
  with the largest ``lambda`` that fits, then single-rank raises to the layer with the largest ``s_i / (r_i + 1)``.
  Equal importance gives the uniform allocation.

Every layer gets rank >= 1 and at most its full rank (a larger rank adds parameters, not expressiveness) and the
``max_param_fraction`` of its weight. The per-rank cost is never a formula of its own: the solver calls the
strategy's ``cost`` (the function that also decides ``max_param_fraction``), which tests compare with the
parameters of layers actually built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from torch import nn

from ..errors import ConfigError
from .base import ApplyContext, StrategyConfig
from .targets import Target

__all__ = [
    "RankBudgetConfig",
    "BudgetResult",
    "check_fraction",
    "budget_limit",
    "model_params",
    "solve_ranks",
    "budget_ranks",
    "budget_summary",
    "LOWER",
]

#: The fraction a budget aims for at least, relative to the budget (ranks are integers).
LOWER = 0.9


class RankBudgetConfig(StrategyConfig):
    """Budget fields shared by the rank-based methods (``lora``, ``dora``, ``loha``; ``lokr`` refuses them).

    Args:
        budget: the adapter trains at most this fraction of the model's parameters (``0.01`` = 1%), counted as
            the plan counts ``trainable %`` (adapter / adapted model; the ``head`` strategy is not part of it).
            Per-layer ranks are chosen for it; mutually exclusive with ``rank`` and ``rank_pattern``. Use it to
            compare methods at equal cost, or to size adapters for a model you do not know well.
        allocation: ``uniform`` (the same rank everywhere, a few layers one higher to fill the budget) or
            ``importance`` (ranks proportional to each layer's mean absolute weight gradient over
            ``importance_batches`` training batches; classification training supplies them, detection does not).
        importance_batches: batches of training data for ``allocation: importance``. 4 is enough to rank
            layers; raise it when the batch size is small (fewer than 16 images).
    """

    budget: float | None = None
    allocation: Literal["uniform", "importance"] = "uniform"
    importance_batches: int = Field(4, gt=0)

    @field_validator("budget")
    @classmethod
    def _fraction(cls, value: float | None) -> float | None:
        return check_fraction(value)

    @model_validator(mode="after")
    def _budget_excludes_rank(self) -> RankBudgetConfig:
        given = self.model_fields_set
        if self.budget is None:
            stray = [k for k in ("allocation", "importance_batches") if k in given]
            if stray:
                raise ValueError(f"{' and '.join(stray)} only appl{'ies' if len(stray) == 1 else 'y'} with a budget;"
                                 f" add e.g. budget: 0.01 or remove {' and '.join(stray)}")
            return self
        clash = [k for k in ("rank", "rank_pattern") if k in given]
        if clash:
            raise ValueError(f"budget and {' and '.join(clash)} are mutually exclusive: the budget chooses every "
                             f"layer's rank; remove {' and '.join(clash)} or the budget (an override can replace "
                             f"the whole entry: strategies.<i>='{{method: {self.method}, budget: {self.budget:g}}}')")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A budget config dumps without ``rank`` / ``rank_pattern`` (the budget chooses them, so the dump parses
        # again); a rank config without the budget fields (its dump is what it was before budgets existed).
        out = handler(self)
        drop = ("rank", "rank_pattern") if self.budget is not None else ("budget", "allocation", "importance_batches")
        return {k: v for k, v in out.items() if k not in drop}

    def budget_label(self) -> str:
        """``budget 1%`` (plus ``importance``) for :meth:`label`."""
        text = f"budget {100 * self.budget:g}%"  # type: ignore[operator]
        return text + (" importance" if self.allocation == "importance" else "")


def check_fraction(value: float | None) -> float | None:
    """A budget is a fraction in (0, 1); ``budget: 1`` (meant as 1%?) and ``budget: 0`` are refused."""
    if value is not None and not 0.0 < value < 1.0:
        raise ValueError("expected a fraction of the model's parameters in (0, 1), e.g. 0.01 for 1%")
    return value


# ---------------------------------------------------------------- arithmetic


def model_params(model: nn.Module) -> int:
    """Parameter elements of ``model`` (shared tensors once), frozen and trainable."""
    return sum(p.numel() for p in model.parameters())


def budget_limit(fraction: float, base: int) -> int:
    """Most adapter parameters ``a`` with ``a / (base + a) <= fraction``."""
    return int(math.floor(fraction * base / (1.0 - fraction)))


def _fill(ranks: list[int], costs: Sequence[Callable[[int], int]], caps: Sequence[int], room: int,
          priority: Callable[[int], tuple]) -> list[int]:
    """Raise single ranks while the total fits ``room`` (the parameters left); ``priority`` picks the layer."""
    while True:
        best, best_key, best_step = -1, None, 0
        for i, r in enumerate(ranks):
            if r >= caps[i]:
                continue
            step = costs[i](r + 1) - costs[i](r)
            if step > room:
                continue
            key = priority(i) + (step, -i)
            if best_key is None or key > best_key:
                best, best_key, best_step = i, key, step
        if best < 0:
            return ranks
        ranks[best] += 1
        room -= best_step


def solve_ranks(costs: Sequence[Callable[[int], int]], caps: Sequence[int], limit: int,
                importance: Sequence[float] | None = None) -> list[int]:
    """Per-layer ranks whose total cost is at most ``limit``: uniform, or proportional to ``importance``.

    Args:
        costs: per layer, the adapter's parameters at a rank (non-decreasing in the rank).
        caps: per layer, the largest useful rank (>= 1).
        limit: the most parameters the adapters may have together.
        importance: per layer, importance per parameter (>= 0); ``None`` for the uniform allocation.

    Returns:
        One rank >= 1 per layer. The caller checks that rank 1 everywhere fits (``sum(c(1)) <= limit``).
    """
    n = len(costs)

    def total(ranks: Sequence[int]) -> int:
        return sum(costs[i](ranks[i]) for i in range(n))

    if importance is None:
        lo, hi = 1, max(caps)
        while lo < hi:  # the largest uniform rank that fits (capped layers stay at their cap)
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if total([min(mid, c) for c in caps]) <= limit else (lo, mid - 1)
        ranks = [min(lo, c) for c in caps]
        return _fill(ranks, costs, caps, limit - total(ranks), lambda i: (-ranks[i],))
    top = max(importance) or 1.0
    weight = [max(s, 0.0) / top for s in importance]

    def at(lam: float) -> list[int]:
        return [min(max(1, int(math.floor(lam * w))), c) for w, c in zip(weight, caps)]

    lo_l, hi_l = 0.0, float(max(caps)) / min((w for w in weight if w > 0), default=1.0) + 1.0
    for _ in range(100):  # bisection on lambda: the total is non-decreasing in it
        mid_l = (lo_l + hi_l) / 2
        lo_l, hi_l = (mid_l, hi_l) if total(at(mid_l)) <= limit else (lo_l, mid_l)
    ranks = at(lo_l)
    return _fill(ranks, costs, caps, limit - total(ranks), lambda i: (weight[i] / (ranks[i] + 1),))


# ---------------------------------------------------------------- targets of a strategy


@dataclass(frozen=True)
class BudgetResult:
    """What a budget resolved to: the targets with their ranks and the record kept with the model.

    ``record`` (JSON) is saved in the plan (``plan.json``, ``adapter.json``) so a saved adapter loads with the
    same ranks, and ``visionpeft params`` shows it: ``ranks`` (layer -> rank), ``budget``, ``allocation``,
    ``adapter_params``, ``model_params``, ``fraction`` and, for ``importance``, the per-layer ``importance``.
    """

    targets: list[Target]
    record: dict[str, Any]


def budget_ranks(
    model: nn.Module, targets: list[Target], cfg: RankBudgetConfig, ctx: ApplyContext, *,
    cost: Callable[[Target], int], max_rank: Callable[[Target], int],
    settings: Callable[[Target, int], Target],
) -> BudgetResult:
    """Choose each target's rank for ``cfg.budget`` (or take the ranks recorded in ``ctx.recorded``).

    Args:
        targets: the selected layers (rank irrelevant); ``settings(t, r)`` gives ``t`` at rank ``r`` (alpha
            resolved for that rank).
        cost: adapter parameters of a target at its rank (the strategy's own count).
        max_rank: the largest useful rank of a target (its full rank).

    Raises:
        ConfigError: rank 1 on every target exceeds the budget (naming the smallest fraction possible), the
            budget exceeds what full-rank adapters on every target can use, ``importance`` without training
            data, or recorded ranks that name other layers.
    """
    method, fraction = cfg.method, float(cfg.budget)  # type: ignore[arg-type]
    recorded = (ctx.recorded or {}).get("ranks")
    if recorded is not None:
        return _from_record(targets, recorded, ctx.recorded or {}, method, settings)
    base = model_params(model)
    limit = budget_limit(fraction, base)
    mpf = getattr(cfg, "max_param_fraction", None)
    caps = [_cap(t, cost, max_rank(t), mpf) for t in targets]
    costs = [_cost_at(t, cost) for t in targets]
    smallest = sum(c(1) for c in costs)
    if smallest > limit:
        share = smallest / (base + smallest)
        raise ConfigError(
            f"{method}.budget: {fraction:g} is below what rank 1 on each of the {len(targets)} target layers costs "
            f"({smallest:,} parameters = {share:.4g} of the model); raise the budget to at least {share:.4g} or "
            f"adapt fewer layers ({method}.targets, {method}.exclude or {method}.start_block)"
        )
    largest = sum(c(k) for c, k in zip(costs, caps))
    if largest < LOWER * fraction * base / (1 - LOWER * fraction):
        share = largest / (base + largest)
        raise ConfigError(
            f"{method}.budget: {fraction:g} is more than full-rank adapters on all {len(targets)} target layers "
            f"can use ({largest:,} parameters = {share:.4g} of the model); lower the budget to {share:.4g} or "
            f"less, or adapt more layers ({method}.targets)"
        )
    scores = None
    if cfg.allocation == "importance":
        from .importance import gradient_importance

        scores = gradient_importance(model, [t.module for t in targets], ctx.probe, cfg.importance_batches, method)
    ranks = solve_ranks(costs, caps, limit, scores)
    chosen = [settings(t, r) for t, r in zip(targets, ranks)]
    used = sum(cost(t) for t in chosen)
    record: dict[str, Any] = {
        "budget": fraction, "allocation": cfg.allocation, "ranks": {t.name: t.rank for t in chosen},
        "adapter_params": used, "model_params": base, "fraction": used / (base + used),
    }
    if scores is not None:
        record["importance"] = {t.name: s for t, s in zip(targets, scores)}
    return BudgetResult(chosen, record)


def _cost_at(t: Target, cost: Callable[[Target], int]) -> Callable[[int], int]:
    return lambda r: cost(replace(t, rank=r))


def _cap(t: Target, cost: Callable[[Target], int], full: int, mpf: float | None) -> int:
    """The largest rank <= ``full`` whose adapter stays within ``mpf`` of the layer's weight (at least 1)."""
    cap = max(1, full)
    if mpf is None:
        return cap
    limit = mpf * t.module.weight.numel()  # type: ignore[union-attr]
    while cap > 1 and cost(replace(t, rank=cap)) > limit:
        cap -= 1
    return cap


def _from_record(targets: list[Target], ranks: dict[str, int], record: dict[str, Any], method: str,
                 settings: Callable[[Target, int], Target]) -> BudgetResult:
    names = [t.name for t in targets]
    if set(names) != set(ranks):
        missing, extra = sorted(set(names) - set(ranks)), sorted(set(ranks) - set(names))
        raise ConfigError(
            f"{method}.budget: the recorded per-layer ranks do not fit this model ({len(missing)} target layers "
            f"without a recorded rank {missing[:3]}, {len(extra)} recorded layers not among the targets "
            f"{extra[:3]}); load the adapter onto the base model it was trained on"
        )
    return BudgetResult([settings(t, int(ranks[t.name])) for t in targets], dict(record))


def budget_summary(record: dict[str, Any]) -> str:
    """One line: ``budget 1% (uniform): 48 layers, rank 3-4 (mean 3.50), 57,600 params = 0.99% of the model``."""
    if "ranks" in record:
        ranks = list(record["ranks"].values())
        what = (f"{len(ranks)} layers, rank {min(ranks)}-{max(ranks)} (mean {sum(ranks) / len(ranks):.2f})"
                if min(ranks) != max(ranks) else f"{len(ranks)} layers, rank {ranks[0]}")
    else:
        what = f"{record['tokens']} token{'s' if record['tokens'] != 1 else ''} x {record['layers']} layers"
    return (f"budget {100 * record['budget']:g}% ({record.get('allocation', 'uniform')}): {what}, "
            f"{record['adapter_params']:,} params = {100 * record['fraction']:.4f}% of the model")
