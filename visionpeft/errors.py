"""Exceptions raised for bad user input.

Every error says which field / file / module is wrong, what was expected and, where possible,
what to do instead. They subclass ``ValueError`` so callers that already catch it keep working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "VisionPeftError",
    "ConfigError",
    "TargetNotFoundError",
    "AdapterMismatchError",
    "PlanViolationError",
    "TrainingDivergedError",
    "closest",
]


class VisionPeftError(ValueError):
    """Base class of every error visionpeft raises on purpose."""


class ConfigError(VisionPeftError):
    """A recipe or strategy configuration is invalid."""


class TargetNotFoundError(VisionPeftError):
    """A strategy's target patterns matched no module or parameter of the model."""


class AdapterMismatchError(VisionPeftError):
    """An adapter file does not belong to the model it is being loaded onto."""


class PlanViolationError(VisionPeftError):
    """Training changed which parameters train, against the trainability plan."""


def closest(word: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Return up to ``n`` candidates most similar to ``word`` (for "did you mean" messages)."""
    pool = list(dict.fromkeys(candidates))
    hits = difflib.get_close_matches(word, pool, n=n, cutoff=0.4)
    if len(hits) < n:
        # Substring matches catch short patterns like "qkv" that difflib scores low.
        core = word.strip("*.^$")
        hits += [c for c in pool if core and core in c and c not in hits][: n - len(hits)]
    return hits


class TrainingDivergedError(VisionPeftError):
    """The training loss became non-finite (NaN or infinite); the run stopped at that step."""
