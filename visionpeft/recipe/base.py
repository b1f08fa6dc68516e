"""Fields every task's recipe shares, and the base class task schemas extend.

A recipe is a frozen pydantic model with ``extra="forbid"``: a typo is an error, never a silently
ignored key. Task schemas (classification here, detection in ``detection.py``) subclass
:class:`BaseRecipe` and add their own sections.
"""

from __future__ import annotations

import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..safe_yaml import brief
from ..strict_numbers import refuse_bool_numbers

__all__ = ["Section", "BaseRecipe", "validate_strategy_list", "parse_lr_grid", "scalar_name", "FULL_BASELINE",
           "AUTO"]

#: The baseline every ``compare`` run trains first.
FULL_BASELINE: list[dict[str, Any]] = [{"method": "full"}]


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        return refuse_bool_numbers(cls, data)  # rank: true / lr: yes would become 1


def validate_strategy_list(entries: Any, where: str) -> list[dict[str, Any]]:
    """Validate strategy mappings with the registry and return them with defaults filled in.

    Keeping plain mappings (not config objects) makes the resolved recipe a readable YAML document
    and lets ``key=value`` overrides address ``strategies.1.rank`` directly. A bare method name in the list
    (``[lora, head]``) stands for ``{method: NAME}`` with defaults.
    """
    if entries is None:
        return []
    if not isinstance(entries, list):
        from ..errors import ConfigError

        raise ConfigError(f"{where}: expected a list of strategies like [{{method: lora, rank: 8}}]; "
                          f"got {brief(entries)}")
    from ..errors import ConfigError

    out: list[dict[str, Any]] = []
    if not entries:
        return out
    # Imported here: the registry loads every strategy module, and with them torch (each config lives beside its
    # layers); a recipe whose other keys are wrong is reported without that (visionpeft.recipe.loader).
    from ..strategies.registry import parse_config

    entries = [{"method": e} if isinstance(e, str) else e for e in entries]  # bare names: [lora, head]
    for i, entry in enumerate(entries):
        try:
            cfg = parse_config(entry, where=f"{where}.{i}")
        except ConfigError as exc:
            msg = str(exc)
            raise ConfigError(msg if msg.startswith(where) else f"{where}.{i}: {msg}") from None
        # Unset optimizer overrides stay out of the resolved recipe (they mean "the recipe's optim values").
        unset = {k for k in ("lr", "weight_decay") if getattr(cfg, k, None) is None}
        out.append(cfg.model_dump(mode="json", exclude=unset))
    return out


def scalar_name(value: Any) -> str:
    """A name from any YAML scalar: ``name: 2024`` (an int to YAML), ``1.5``, ``2024-01-05`` (a date), ``true``.

    Raises:
        ValueError: ``null`` or a list / mapping (no name to write a run directory under).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"  # as it was written in YAML, not Python's True
    if isinstance(value, int | float | datetime.date):
        return str(value)
    raise ValueError(f"expected a name (text, or any number or date), got {brief(value)}")


#: ``lr_grid`` value (for one run, or for the whole compare) that asks for the rate to be chosen automatically.
AUTO = "auto"


def parse_lr_grid(value: Any) -> dict[str, list[float] | str] | str:
    """Check ``lr_grid``: ``auto`` (every run), or a mapping of compare run name -> non-empty list of positive
    learning rates or ``auto`` (see :func:`visionpeft.tasks.protocol.lr_grids`).

    Raises:
        ValueError: one line naming ``lr_grid.<run>`` and what was expected.
    """
    example = "lr_grid: {lora_r8: [3e-4, 1e-3, 3e-3], lokr_r8: auto} or lr_grid: auto"
    if value == AUTO:
        return AUTO
    if not isinstance(value, dict) or not value:
        raise ValueError(f"expected 'auto' or a mapping of compare run name -> list of learning rates (or auto), "
                         f"e.g. {example}; got {brief(value)}")
    out: dict[str, list[float] | str] = {}
    for key, rates in value.items():
        if rates == AUTO:
            out[scalar_name(key)] = AUTO
            continue
        rates = [_as_rate(r) for r in rates] if isinstance(rates, list) else None
        if not rates or any(r is None for r in rates):
            raise ValueError(f"lr_grid.{key}: expected auto or a non-empty list of positive learning rates such as "
                             f"[3e-4, 1e-3]; got {brief(value[key])}")
        if len(set(rates)) != len(rates):
            raise ValueError(f"lr_grid.{key}: a rate is listed twice in {brief(value[key])}; list each once")
        out[scalar_name(key)] = [float(r) for r in rates if r is not None]
    return out


def _as_rate(value: Any) -> float | None:
    """A positive finite number (YAML 1.1's string ``"3e-4"`` included), else ``None``."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 < value < float("inf") else None


class BaseRecipe(Section):
    """Common top-level keys of every recipe.

    Attributes:
        task: which task schema and runner to use (``classification`` or ``detection``).
        name: run name; run directories are ``<output>/<name>-<timestamp>``. Without one, the run is named after
            its data and strategies (``coco8-freeze10``, ``flowers5_128-lora-head``; :mod:`.naming`).
        model: the model to fine-tune (a timm name for classification, a ``.pt``/yaml for detection).
        data: dataset descriptor YAML or dataset folder.
        strategies: strategy list trained by ``visionpeft train`` (e.g. ``[{method: lora, rank: 8}]``).
        compare: named strategy lists trained by ``visionpeft compare``; the full fine-tuning baseline
            ``full: [{method: full}]`` is always trained first. An entry ``full: [{method: full, lr: 1e-4}]``
            sets the baseline's own optimizer settings (it must hold exactly one ``full`` strategy).
        seed: random seed shared by every run of a compare, so runs differ only by strategy (the first seed
            when ``seeds`` > 1).
        seeds: how many times ``visionpeft compare`` trains every run, with seeds ``seed``, ``seed + 1``, ...
            (the seed sets the head and adapter initialisation, the data order and the augmentation). The report
            gives mean, standard deviation, a 95% Student t-interval and the paired difference to full
            fine-tuning per strategy. 3 or more for a verdict you can trust; 1 (default) reports one run, no
            interval. ``visionpeft train`` trains ``seed`` only.
        lr_grid: learning rates to choose from per compare run, ``{run name: [3e-4, 1e-3, 3e-3]}``. Each rate
            trains once (first seed), the one with the best validation metric is kept and the seeds train at it;
            the rate is set on every strategy entry of the run except ``head`` (whose rate is
            ``optim.head_lr``). The sweep's training time is counted in the report's ``sweep_seconds``.
            ``{run name: auto}`` (or ``lr_grid: auto`` for every run that trains more than the head) uses the
            grid ``rate x {0.3, 1, 3, 10}`` around the run's own rate (its entries' ``lr``, else ``optim.lr``,
            else the method's default; classification only): :data:`visionpeft.tasks.protocol.AUTO_FACTORS`.
        output: root folder of run directories.
        tensorboard: write TensorBoard event files into the run directory (see ``visionpeft.logging``).
    """

    #: Keys that define the model a run's checkpoint holds the tensors of: a resume cannot change them (every
    #: task's runner reads this one list; a schema adds its own model-defining keys).
    FIXED_ON_RESUME: ClassVar[tuple[str, ...]] = ("task", "model", "seed", "strategies")

    task: str = "classification"
    name: str = "run"  # filled from data and strategies when the recipe gives none (.naming)
    model: str
    data: str
    strategies: list[dict[str, Any]] = Field(default_factory=list)
    compare: dict[str, list[dict[str, Any]]] | None = None
    seed: int = 0
    seeds: int = 1
    lr_grid: dict[str, list[float] | str] | str | None = None
    output: str = "runs/visionpeft"
    tensorboard: bool = True

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        # A run is named after what it is (coco8-freeze10), not after the recipe it came from.
        if isinstance(data, dict) and data.get("name") in (None, ""):
            from .naming import derived_name

            data = {**data, "name": derived_name(data)}
        return data

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        return scalar_name(value)

    @field_validator("strategies", mode="before")
    @classmethod
    def _check_strategies(cls, value: Any) -> list[dict[str, Any]]:
        return validate_strategy_list(value, "strategies")

    @field_validator("compare", mode="before")
    @classmethod
    def _check_compare(cls, value: Any) -> dict[str, list[dict[str, Any]]] | None:
        if value is None:
            return None
        if not isinstance(value, dict) or not value:
            from ..errors import ConfigError

            raise ConfigError(
                "compare: expected a mapping of run name -> strategy list, e.g. "
                "{lora: [{method: lora}], linear_probe: [{method: head}]}; got " + brief(value)
            )
        out = {scalar_name(k): validate_strategy_list(v, f"compare.{k}") for k, v in value.items()}
        if "full" in out and [e["method"] for e in out["full"]] != ["full"]:
            from ..errors import ConfigError

            raise ConfigError(
                f"compare.full: the baseline must be exactly one full strategy, e.g. [{{method: full, lr: 1e-4}}]; "
                f"got {out['full']}. Give other runs another name"
            )
        return out

    @field_validator("seeds", mode="before")
    @classmethod
    def _check_seeds(cls, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"expected how many seeds every compare run trains (seed, seed+1, ...), an integer "
                             f">= 1 such as 3; got {brief(value)}")
        return value

    @field_validator("lr_grid", mode="before")
    @classmethod
    def _check_lr_grid(cls, value: Any) -> dict[str, list[float] | str] | str | None:
        return None if value is None else parse_lr_grid(value)

    @model_validator(mode="after")
    def _grid_names_runs(self) -> BaseRecipe:
        if isinstance(self.lr_grid, dict):
            runs = self.compare_runs()
            unknown = [k for k in self.lr_grid if k not in runs]
            if unknown:
                from ..errors import closest

                hint = closest(unknown[0], runs, n=1)
                raise ValueError(f"lr_grid.{unknown[0]}: not a compare run; the runs are {list(runs)}"
                                 + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            heads = [k for k in self.lr_grid if all(e["method"] == "head" for e in runs[k])]
            if heads:
                raise ValueError(f"lr_grid.{heads[0]}: the run trains only the head, whose rate is optim.head_lr "
                                 "(classification); a grid would train the same run several times. Remove the entry")
        return self

    def compare_runs(self) -> dict[str, list[dict[str, Any]]]:
        """The runs of ``visionpeft compare``: ``full`` first, then each named list (or ``strategies``)."""
        named = self.compare if self.compare else {self.name: self.strategies}
        baseline = named.get("full", FULL_BASELINE) if self.compare else FULL_BASELINE
        runs: dict[str, list[dict[str, Any]]] = {"full": [dict(s) for s in baseline]}
        for key, strategies in named.items():
            if key == "full":
                continue  # the baseline is always present exactly once
            runs[key] = [dict(s) for s in strategies]
        return runs
