"""Fields every task's recipe shares, and the base class task schemas extend.

A recipe is a frozen pydantic model with ``extra="forbid"``: a typo is an error, never a silently
ignored key. Task schemas (classification here, detection in ``detection.py``) subclass
:class:`BaseRecipe` and add their own sections.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..safe_yaml import brief
from ..strategies.registry import parse_config

__all__ = ["Section", "BaseRecipe", "validate_strategy_list", "FULL_BASELINE"]

#: The baseline every ``compare`` run trains first.
FULL_BASELINE: list[dict[str, Any]] = [{"method": "full"}]


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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

    out = []
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


class BaseRecipe(Section):
    """Common top-level keys of every recipe.

    Attributes:
        task: which task schema and runner to use (``classification`` or ``detection``).
        name: run name; run directories are ``<output>/<name>-<timestamp>``.
        model: the model to fine-tune (a timm name for classification, a ``.pt``/yaml for detection).
        data: dataset descriptor YAML or dataset folder.
        strategies: strategy list trained by ``visionpeft train`` (e.g. ``[{method: lora, rank: 8}]``).
        compare: named strategy lists trained by ``visionpeft compare``; the full fine-tuning baseline
            ``full: [{method: full}]`` is always trained first. An entry ``full: [{method: full, lr: 1e-4}]``
            sets the baseline's own optimizer settings (it must hold exactly one ``full`` strategy).
        seed: random seed shared by every run of a compare, so runs differ only by strategy.
        output: root folder of run directories.
        tensorboard: write TensorBoard event files into the run directory (see ``visionpeft.logging``).
    """

    task: str = "classification"
    name: str = "run"
    model: str
    data: str
    strategies: list[dict[str, Any]] = Field(default_factory=list)
    compare: dict[str, list[dict[str, Any]]] | None = None
    seed: int = 0
    output: str = "runs/visionpeft"
    tensorboard: bool = True

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
        out = {str(k): validate_strategy_list(v, f"compare.{k}") for k, v in value.items()}
        if "full" in out and [e["method"] for e in out["full"]] != ["full"]:
            from ..errors import ConfigError

            raise ConfigError(
                f"compare.full: the baseline must be exactly one full strategy, e.g. [{{method: full, lr: 1e-4}}]; "
                f"got {out['full']}. Give other runs another name"
            )
        return out

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
